// Parameter registration, the logical <-> local index mapping and initialisation.
#include "nn/parameters.h"
#include "nn/param_runs.h"

#include <algorithm>

#include "core/check.h"
#include "core/rng.h"

namespace trident::nn {

Shape local_shape_of(const Shape& logical, const ShardSpec& shard) {
  if (shard.is_full()) return logical;
  TRI_CHECK(shard.dim >= 0 && shard.dim < static_cast<int>(logical.size()),
            "shard dimension {} out of range for shape {}", shard.dim, shape_str(logical));
  Shape local = logical;
  int64_t len = 0;
  for (const Chunk& c : shard.chunks) {
    TRI_CHECK(c.length >= 0 && (c.logical_begin < 0 ||
                                c.logical_begin + c.length <= logical[static_cast<std::size_t>(shard.dim)]),
              "chunk [{}, +{}) out of range for dim {} of {}", c.logical_begin, c.length,
              shard.dim, shape_str(logical));
    len += c.length;
  }
  local[static_cast<std::size_t>(shard.dim)] = len;
  return local;
}

std::vector<LocalRun> local_runs(const ParamInfo& info) {
  const int64_t n = shape_numel(info.local_shape);
  if (info.shard.is_full()) return {LocalRun{0, 0, n}};
  // View both tensors as (outer, dim, inner) around the split dimension.
  const auto d = static_cast<std::size_t>(info.shard.dim);
  int64_t outer = 1, inner = 1;
  for (std::size_t i = 0; i < d; ++i) outer *= info.logical_shape[i];
  for (std::size_t i = d + 1; i < info.logical_shape.size(); ++i) inner *= info.logical_shape[i];
  const int64_t logical_dim = info.logical_shape[d];
  const int64_t local_dim = info.local_shape[d];
  std::vector<LocalRun> runs;
  for (int64_t o = 0; o < outer; ++o) {
    int64_t local_row = 0;
    for (const Chunk& c : info.shard.chunks) {
      runs.push_back({(o * local_dim + local_row) * inner,
                      c.logical_begin < 0 ? -1 : (o * logical_dim + c.logical_begin) * inner, c.length * inner});
      local_row += c.length;
    }
  }
  return runs;
}

void for_each_local_element(const ParamInfo& info,
                            const std::function<void(int64_t, int64_t)>& fn) {
  for (const LocalRun& r : local_runs(info)) {
    for (int64_t i = 0; i < r.length; ++i) fn(r.local + i, r.logical < 0 ? -1 : r.logical + i);
  }
}

void scatter_logical_to_local(const ParamInfo& info, const float* logical, float* local) {
  for_each_local_element(info, [&](int64_t l, int64_t g) { local[l] = g < 0 ? 0.0f : logical[g]; });
}

void gather_local_to_logical(const ParamInfo& info, const float* local, float* logical) {
  for_each_local_element(info, [&](int64_t l, int64_t g) {
    if (g >= 0) logical[g] = local[l];
  });
}

int ParameterSet::begin_group(std::string name, GroupRole role) {
  TRI_CHECK(values_.empty(), "parameters registered after allocation");
  if (!group_names_.empty()) group_end_.back() = total_;
  group_names_.push_back(std::move(name));
  group_roles_.push_back(role);
  group_begin_.push_back(total_);
  group_end_.push_back(total_);
  return num_groups() - 1;
}

int ParameterSet::add(ParamInfo info) {
  TRI_CHECK(values_.empty(), "parameter {} registered after allocation", info.name);
  TRI_CHECK(!group_names_.empty(), "parameter {} registered outside a group", info.name);
  TRI_CHECK(ids_.count(info.name) == 0, "parameter {} registered twice", info.name);
  info.local_shape = local_shape_of(info.logical_shape, info.shard);
  info.numel = info.packed ? 0 : shape_numel(info.local_shape);
  info.group = num_groups() - 1;
  info.offset = total_;
  total_ += info.numel;
  info.grad_offset = info.frozen ? -1 : grad_total_;
  if (!info.frozen) grad_total_ += info.numel;
  group_end_.back() = total_;
  ids_.emplace(info.name, size());
  infos_.push_back(std::move(info));
  return size() - 1;
}

int ParameterSet::find_role(ParamRole role) const {
  for (int id = 0; id < size(); ++id) {
    if (infos_[static_cast<std::size_t>(id)].role == role) return id;
  }
  return -1;
}

int ParameterSet::find_tied() const {
  for (int id = 0; id < size(); ++id) {
    if (infos_[static_cast<std::size_t>(id)].tied) return id;
  }
  return -1;
}

int ParameterSet::find_group(GroupRole role) const {
  for (int g = 0; g < num_groups(); ++g) {
    if (group_roles_[static_cast<std::size_t>(g)] == role) return g;
  }
  return -1;
}

int ParameterSet::find(const std::string& name) const {
  const auto it = ids_.find(name);
  return it == ids_.end() ? -1 : it->second;
}

void ParameterSet::allocate(MemoryTracker& tracker, FlatBuffers flat) {
  if (flat.values) values_ = FloatBuffer(tracker, MemCategory::kParameters, static_cast<std::size_t>(total_));
  if (flat.grads) grads_ = FloatBuffer(tracker, MemCategory::kGradients, static_cast<std::size_t>(grad_total_));
  value_ptr_.resize(infos_.size());
  grad_ptr_.resize(infos_.size());
  for (std::size_t id = 0; id < infos_.size(); ++id) {
    const bool in_flat = !infos_[id].packed;
    value_ptr_[id] = in_flat && flat.values ? values_.data() + infos_[id].offset : nullptr;
    grad_ptr_[id] = infos_[id].grad_offset >= 0 && flat.grads ? grads_.data() + infos_[id].grad_offset : nullptr;
  }
}

void ParameterSet::release_flat_values() {
  values_.reset();
  for (float*& p : value_ptr_) p = nullptr;
}

void ParameterSet::keep_flat_values(const std::vector<std::pair<int64_t, int64_t>>& backed) {
  TRI_CHECK(!values_.empty() || total_ == 0, "keep_flat_values: the flat values were not allocated");
  if (total_ == 0) return;
  MemoryTracker* tracker = values_.tracker();
  FloatBuffer kept(*tracker, MemCategory::kParameters, static_cast<std::size_t>(total_), backed);
  for (const auto& [lo, hi] : backed) std::copy(values_.data() + lo, values_.data() + hi, kept.data() + lo);
  for (std::size_t id = 0; id < infos_.size(); ++id) {
    if (value_ptr_[id] == values_.data() + infos_[id].offset) value_ptr_[id] = kept.data() + infos_[id].offset;
  }
  values_ = std::move(kept);
}

void ParameterSet::release_flat_grads() {
  grads_.reset();
  for (float*& p : grad_ptr_) p = nullptr;
}

void ParameterSet::initialize(uint64_t seed) {
  TRI_CHECK(!values_.empty() || total_ == 0, "initialize() before allocate()");
  for (int id = 0; id < size(); ++id) initialize(seed, id);
}

namespace {

// The declared init of logical element g (-1: padding, 0).
float initial_value(const ParamInfo& p, uint64_t seed, uint64_t stream, int64_t g) {
  if (g < 0) return 0.0f;
  if (p.init_std > 0.0f) return p.init_std * normal_at(seed, stream, static_cast<uint64_t>(g));
  // uniform_at is in (0, 1]: 2u - 1 in (-1, 1].
  if (p.init_uniform > 0.0f) return p.init_uniform * (2.0f * uniform_at(seed, stream, static_cast<uint64_t>(g)) - 1.0f);
  return p.init_value;
}

}  // namespace

void ParameterSet::initialize(uint64_t seed, int id) {
  const ParamInfo& p = info(id);
  if (p.packed) return;  // loaded packed, never drawn
  float* out = data(id);
  TRI_CHECK(out != nullptr || p.numel == 0, "initialize: parameter {} has no storage", p.name);
  const uint64_t stream = fnv1a64(p.name);
  for_each_local_element(p, [&](int64_t l, int64_t g) { out[l] = initial_value(p, seed, stream, g); });
}

void ParameterSet::initialize_range(uint64_t seed, int id, int64_t begin, int64_t count, float* out) const {
  const ParamInfo& p = info(id);
  TRI_CHECK(!p.packed && begin >= 0 && count >= 0 && begin + count <= p.numel,
            "initialize_range: local elements [{}, {}) of {} ({} held{})", begin, begin + count, p.name, p.numel,
            p.packed ? ", packed" : "");
  const uint64_t stream = fnv1a64(p.name);
  if (p.shard.is_full()) {
    for (int64_t l = 0; l < count; ++l) out[l] = initial_value(p, seed, stream, begin + l);
    return;
  }
  // Local element l = (o * local_dim + local_row) * inner + i, local_row running through the
  // chunks in order (as for_each_local_element); walk from `begin` without a division each.
  const auto d = static_cast<std::size_t>(p.shard.dim);
  int64_t inner = 1;
  for (std::size_t k = d + 1; k < p.logical_shape.size(); ++k) inner *= p.logical_shape[k];
  const int64_t logical_dim = p.logical_shape[d], local_dim = p.local_shape[d];
  if (count == 0 || inner == 0 || local_dim == 0) return;
  int64_t o = begin / (local_dim * inner), row = begin / inner % local_dim, i = begin % inner;
  std::size_t c = 0;
  int64_t r = row;  // row within chunk c
  while (r >= p.shard.chunks[c].length) r -= p.shard.chunks[c++].length;
  for (int64_t l = 0; l < count; ++l) {
    const Chunk& ch = p.shard.chunks[c];
    const int64_t g = ch.logical_begin < 0 ? -1 : (o * logical_dim + ch.logical_begin + r) * inner + i;
    out[l] = initial_value(p, seed, stream, g);
    if (++i < inner) continue;
    i = 0;
    if (++r < ch.length) continue;
    r = 0;
    // The next chunk with rows (an empty one holds none), else the next outer index.
    do {
      if (++c == p.shard.chunks.size()) c = 0, ++o;
    } while (p.shard.chunks[c].length == 0);
  }
}

}  // namespace trident::nn
