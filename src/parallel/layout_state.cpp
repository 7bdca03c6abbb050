// Logical tensors in and out of a layout (see layout_state.h).
#include "parallel/layout_state.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "nn/param_runs.h"

namespace trident::parallel {

namespace {

// Builds the logical tensor on world rank 0 from every rank's contribution: owners write their
// elements (`local`, this rank's local tensor), everyone else (local == nullptr) zeros, and a
// sum over the world (x + 0 == x exactly) assembles it.
void assemble_logical(comm::Mesh& mesh, const nn::ParamInfo& info, const float* local, float* out) {
  const auto n = static_cast<std::size_t>(shape_numel(info.logical_shape));
  // Rank 0 sums straight into `out`; the others into a scratch tensor.
  std::vector<float> scratch;
  float* logical = mesh.rank() == 0 && out ? out : (scratch.resize(n), scratch.data());
  std::fill_n(logical, n, 0.0f);
  if (local) nn::gather_local_to_logical(info, local, logical);
  mesh.world().allreduce(std::span<float>(logical, n), comm::ReduceOp::kSum).wait();
}

// The chunk and id of `name` whose copy this rank counts and saves; chunk null if none.
struct OwnedParam {
  ModelChunk* chunk = nullptr;
  int id = -1;
};
OwnedParam owned_param(RankLayout& L, const std::string& name) {
  // At most one chunk of a rank counts a parameter (the last stage's tied copy never does).
  for (ModelChunk& c : L.chunks()) {
    const int id = c.model->params().find(name);
    if (id >= 0 && RankLayout::owns(c, id)) return {&c, id};
  }
  return {};
}

// Chunk c's AdamW moments (kind 0: exp_avg, 1: exp_avg_sq) of parameter `id` that this rank
// holds: `count` elements from the parameter's local index `local_begin`, which is
// `store_begin` in the moment store (in memory or offloaded); read into `data` when `read`.
struct MomentSlice {
  std::vector<float> data;
  int64_t local_begin, count, store_begin;
};
MomentSlice moments_of(ModelChunk& c, int id, int kind, bool read = true) {
  // The optimizer holds flat ranges (everything, or the ZeRO shard's: dense parameters sharded
  // over dp, experts over edp); a parameter meets at most one of them.
  const nn::ParamInfo& info = c.model->params().info(id);
  const auto [lo, hi] = c.adamw->owned_part(info.offset, info.offset + info.numel);
  // Not in this rank's range (another ZeRO shard's), or frozen (no moments: a LoRA base).
  if (hi == lo || info.frozen) return {{}, 0, 0, 0};
  MomentSlice m{{}, lo - info.offset, hi - lo, c.adamw->store_index(lo)};
  if (read) {
    m.data.resize(static_cast<std::size_t>(m.count));
    c.adamw->moments().read(kind, m.store_begin, m.count, m.data.data());
  }
  return m;
}

// Index of the first non-finite of n floats, or -1.
int64_t first_nonfinite(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) return i;
  }
  return -1;
}

}  // namespace

void initialize_params(RankLayout& L, uint64_t seed) {
  for (ModelChunk& c : L.chunks()) {
    if (c.dp && c.dp->values_sharded()) {
      c.dp->initialize_shard(seed);  // ZeRO-3: only this rank's shard exists
    } else if (ShardedMaster* m = c.dp ? c.dp->master() : nullptr) {
      // ZeRO-1/2's sharded master: the operand-only parameters' shard there, the rest flat.
      for (int id = 0; id < c.model->params().size(); ++id) {
        if (!m->holds(id)) c.model->params().initialize(seed, id);
      }
      m->initialize(seed);
    } else {
      c.model->params().initialize(seed);
    }
    if (c.dp) c.dp->values_changed();
  }
}

void gather_param(RankLayout& L, const std::string& name, const Shape& logical_shape, float* out) {
  // Every rank takes part, also those that do not hold `name` (another stage does).
  nn::ParamInfo info;
  info.name = name;
  info.logical_shape = logical_shape;
  std::vector<float> shard;
  const float* local = nullptr;
  bool contributes = false;
  if (const OwnedParam p = owned_param(L, name); p.chunk) {
    info = p.chunk->model->params().info(p.id);
    TRI_CHECK(!info.packed, "{} is a packed (quantized) base matrix: it is not gathered as fp32; a QLoRA "
              "checkpoint keeps the quantized base as loaded", name);
    const ShardedMaster* m = p.chunk->dp ? p.chunk->dp->master() : nullptr;
    if (p.chunk->dp && p.chunk->dp->values_sharded()) {
      // ZeRO-3: each dp rank adds its shard's elements (zeros elsewhere).
      shard.assign(static_cast<std::size_t>(info.numel), 0.0f);
      p.chunk->dp->read_shard_values(p.id, shard.data());
      local = shard.data();
      contributes = true;
    } else if (m && m->holds(p.id)) {  // ZeRO-1/2's sharded master: likewise
      shard.assign(static_cast<std::size_t>(info.numel), 0.0f);
      m->read_values(p.id, shard.data());
      local = shard.data();
      contributes = true;
    } else {
      local = p.chunk->model->params().data(p.id);
      contributes = L.replica_coord(info) == 0;
    }
  }
  assemble_logical(L.mesh(), info, contributes ? local : nullptr, out);
}

void gather_optimizer_state(RankLayout& L, const std::string& name, const Shape& logical_shape,
                            int kind, float* out) {
  nn::ParamInfo info;
  info.name = name;
  info.logical_shape = logical_shape;
  std::vector<float> padded;
  const float* local = nullptr;
  bool contributes = false;
  if (const OwnedParam p = owned_param(L, name); p.chunk) {
    info = p.chunk->model->params().info(p.id);
    MomentSlice m = moments_of(*p.chunk, p.id, kind);
    if (m.local_begin == 0 && m.count == info.numel) {
      padded = std::move(m.data);  // the whole local tensor
    } else {
      padded.assign(static_cast<std::size_t>(info.numel), 0.0f);
      std::copy_n(m.data.data(), m.count, padded.data() + m.local_begin);
    }
    local = padded.data();
    // ZeRO >= 1: every dp rank adds its shard (zeros elsewhere; an expert's shards are over the
    // edp ranks holding it); otherwise dp rank 0's copy (an expert's: edp rank 0's).
    contributes = L.options().zero >= 1 || L.replica_coord(info) == 0;
  }
  assemble_logical(L.mesh(), info, contributes ? local : nullptr, out);
}

void load_param(RankLayout& L, const std::string& name, const float* logical) {
  for (ModelChunk& c : L.chunks()) {
    nn::ParameterSet& ps = c.model->params();
    const int id = ps.find(name);
    if (id < 0) continue;  // held by another stage
    TRI_CHECK(!ps.info(id).packed, "{} is a packed base matrix: load it with load_packed_param", name);
    ShardedMaster* m = c.dp ? c.dp->master() : nullptr;
    if (c.dp && c.dp->values_sharded()) {
      std::vector<float> local(static_cast<std::size_t>(ps.info(id).numel));
      nn::scatter_logical_to_local(ps.info(id), logical, local.data());
      c.dp->write_shard_values(id, local.data());
    } else if (m && m->holds(id)) {
      std::vector<float> local(static_cast<std::size_t>(ps.info(id).numel));
      nn::scatter_logical_to_local(ps.info(id), logical, local.data());
      const ShardedMaster::Part q = m->part(id);
      m->write_range(id, q.local_begin, q.count, local.data() + q.local_begin);
    } else {
      nn::scatter_logical_to_local(ps.info(id), logical, ps.data(id));
    }
    if (c.dp) c.dp->values_changed();
  }
}

void load_optimizer_state(RankLayout& L, const std::string& name, int kind, const float* logical) {
  for (ModelChunk& c : L.chunks()) {
    const int id = c.model->params().find(name);
    if (id < 0) continue;
    std::vector<float> local(static_cast<std::size_t>(c.model->params().info(id).numel));
    nn::scatter_logical_to_local(c.model->params().info(id), logical, local.data());
    const MomentSlice m = moments_of(c, id, kind, /*read=*/false);
    c.adamw->moments().write(kind, m.store_begin, m.count, local.data() + m.local_begin);
  }
}

namespace {

// Local elements [l0, l1) of a parameter into out[0, l1 - l0): the logical elements its runs
// hold, through `read`; its padding, zeros.
void read_local(const std::vector<nn::LocalRun>& runs, int64_t l0, int64_t l1, const LogicalReader& read,
                float* out) {
  for (const nn::LocalRun& r : runs) {
    const int64_t a = std::max(l0, r.local), b = std::min(l1, r.local + r.length);
    if (a >= b) continue;
    if (r.logical < 0) {
      std::fill(out + (a - l0), out + (b - l0), 0.0f);
    } else {
      read(r.logical + (a - r.local), b - a, out + (a - l0));
    }
  }
}

// Local elements [first, first + count) of a parameter, stored from index `at` on, a piece at a
// time: each piece ends where the stored index reaches a multiple of `piece` (kLoadChunk: the
// offload file's default block, so its writes are whole blocks) or at the end; store(local,
// index, n, values) takes each. One piece buffer, counted as workspace.
template <class Store>
void load_pieces(MemoryTracker& tracker, const std::vector<nn::LocalRun>& runs, int64_t first, int64_t count,
                 int64_t at, int64_t piece, const LogicalReader& read, Store&& store) {
  TRI_CHECK(piece > 0, "a checkpoint load's piece must hold at least one element, not {}", piece);
  if (count <= 0) return;
  FloatBuffer buf(tracker, MemCategory::kWorkspace, static_cast<std::size_t>(std::min(count, piece)));
  for (int64_t done = 0; done < count;) {
    const int64_t n = std::min(count - done, piece - (at + done) % piece);
    read_local(runs, first + done, first + done + n, read, buf.data());
    store(first + done, at + done, n, buf.data());
    done += n;
  }
}

}  // namespace

void load_param_from(RankLayout& L, const std::string& name, const LogicalReader& read, int64_t piece) {
  for (ModelChunk& c : L.chunks()) {
    nn::ParameterSet& ps = c.model->params();
    const int id = ps.find(name);
    if (id < 0) continue;  // held by another stage
    const nn::ParamInfo& info = ps.info(id);
    TRI_CHECK(!info.packed, "{} is a packed base matrix: load it with load_packed_param", name);
    const std::vector<nn::LocalRun> runs = nn::local_runs(info);
    ShardedMaster* m = c.dp ? c.dp->master() : nullptr;
    if (c.dp && c.dp->values_sharded()) {
      const DataParallel::ShardPart part = c.dp->shard_part(id);
      load_pieces(L.tracker(), runs, part.local_begin, part.count, part.shard_begin, piece, read,
                  [&](int64_t local, int64_t, int64_t n, const float* v) { c.dp->write_shard_range(id, local, n, v); });
    } else if (m && m->holds(id)) {  // ZeRO-1/2's sharded master: this rank's part only
      const ShardedMaster::Part q = m->part(id);
      load_pieces(L.tracker(), runs, q.local_begin, q.count, q.at, piece, read,
                  [&](int64_t local, int64_t, int64_t n, const float* v) { m->write_range(id, local, n, v); });
    } else {
      read_local(runs, 0, info.numel, read, ps.data(id));  // straight into the flat values
    }
    if (c.dp) c.dp->values_changed();
  }
}

void load_optimizer_state_from(RankLayout& L, const std::string& name, int kind, const LogicalReader& read,
                               int64_t piece) {
  for (ModelChunk& c : L.chunks()) {
    const int id = c.model->params().find(name);
    if (id < 0) continue;
    const MomentSlice m = moments_of(c, id, kind, /*read=*/false);
    load_pieces(L.tracker(), nn::local_runs(c.model->params().info(id)), m.local_begin, m.count,
                m.store_begin, piece, read, [&](int64_t, int64_t index, int64_t n, const float* v) {
                  c.adamw->moments().write(kind, index, n, v);
                });
  }
}

void load_packed_param(RankLayout& L, const nn::ParamDecl& decl, const quant::QuantMatrix& full) {
  for (ModelChunk& c : L.chunks()) {
    TRI_CHECK(c.packed != nullptr, "{}: this run's base is not packed (no QLoRA)", decl.name);
    c.packed->load(decl, full);
  }
}

void check_packed_base(const RankLayout& L) {
  for (const ModelChunk& c : L.chunks()) {
    if (c.packed) c.packed->check_complete();
  }
}

int64_t optimizer_step(const RankLayout& L) { return L.chunks().front().adamw->step_count(); }

void set_optimizer_step(RankLayout& L, int64_t t) {
  for (ModelChunk& c : L.chunks()) c.adamw->set_step_count(t);
}

std::string find_nonfinite_state(RankLayout& L) {
  std::string mine;
  for (ModelChunk& c : L.chunks()) {
    const nn::ParameterSet& ps = c.model->params();
    std::vector<float> shard;
    for (int id = 0; id < ps.size() && mine.empty(); ++id) {
      const nn::ParamInfo& info = ps.info(id);
      const float* values = ps.data(id);
      if (c.dp && c.dp->values_sharded()) {  // ZeRO-3: only the shard is this rank's
        shard.assign(static_cast<std::size_t>(info.numel), 0.0f);
        c.dp->read_shard_values(id, shard.data());
        values = shard.data();
      } else if (const ShardedMaster* m = c.dp ? c.dp->master() : nullptr; m && m->holds(id)) {
        shard.assign(static_cast<std::size_t>(info.numel), 0.0f);  // ZeRO-1/2's sharded master
        m->read_values(id, shard.data());
        values = shard.data();
      }
      if (const int64_t i = first_nonfinite(values, info.numel); i >= 0) {
        mine = fmt::format("{} (weights), local element {}, value {}", info.name, i, values[i]);
        break;
      }
      for (int kind = 0; kind < 2; ++kind) {
        const MomentSlice m = moments_of(c, id, kind);
        if (const int64_t i = first_nonfinite(m.data.data(), m.count); i >= 0) {
          mine = fmt::format("{} ({}), local element {}, value {}", info.name,
                             kind == 0 ? "exp_avg" : "exp_avg_sq", m.local_begin + i, m.data[i]);
          break;
        }
      }
    }
    if (!mine.empty()) break;
  }
  // The lowest rank that found one tells everyone what it found.
  comm::Communicator& world = L.mesh().world();
  std::vector<int32_t> first{mine.empty() ? world.size() : world.rank()};
  world.allreduce(std::span<int32_t>(first), comm::ReduceOp::kMin).wait();
  if (first[0] == world.size()) return {};
  std::vector<uint8_t> text(256, 0);
  if (world.rank() == first[0]) std::copy_n(mine.begin(), std::min(mine.size(), text.size() - 1), text.begin());
  world.broadcast(std::span<uint8_t>(text), first[0]).wait();
  return fmt::format("{} on rank {}", reinterpret_cast<const char*>(text.data()), first[0]);
}

}  // namespace trident::parallel
