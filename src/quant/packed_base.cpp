// A QLoRA run's packed frozen base, dequantized one layer group at a time (see packed_base.h).
#include "quant/packed_base.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "nn/architecture.h"

namespace trident::quant {

namespace {

// Appends row o of `src` (all its packed bytes, scales and offsets) to `dst`.
void append_row(QuantMatrix& dst, const QuantMatrix& src, int64_t o) {
  const auto O = static_cast<std::size_t>(o);
  const auto C = static_cast<std::size_t>(src.cols), G = static_cast<std::size_t>(src.groups_per_row());
  if (src.format == Format::kInt8) {
    dst.q8.insert(dst.q8.end(), src.q8.begin() + O * C, src.q8.begin() + (O + 1) * C);
    dst.scale.push_back(src.scale[O]);
  } else {
    dst.q4.insert(dst.q4.end(), src.q4.begin() + O * C / 2, src.q4.begin() + (O + 1) * C / 2);
    dst.scale.insert(dst.scale.end(), src.scale.begin() + O * G, src.scale.begin() + (O + 1) * G);
    dst.offset.insert(dst.offset.end(), src.offset.begin() + O * G, src.offset.begin() + (O + 1) * G);
  }
}

}  // namespace

void check_whole_q4_groups(const nn::ParamInfo& info, bool in_out, int group, int64_t cols) {
  if (info.shard.is_full() || info.shard.dim == (in_out ? 1 : 0)) return;  // whole rows: any split works
  for (const nn::Chunk& c : info.shard.chunks) {
    TRI_CHECK(c.logical_begin % group == 0 && c.length % group == 0,
              "{}: its q4 groups of {} inputs straddle the tensor-parallel split (this rank takes inputs [{}, {}) "
              "of {}): quantize the base with a --group-size dividing {}, or use a tp that splits {} inputs into "
              "whole groups", info.name, group, c.logical_begin, c.logical_begin + c.length, cols, c.length, cols);
  }
}

void check_packed_tp_split(const nn::ModelConfig& c, int tp) {
  if (!c.packed_base() || parse_format(c.packed_base_format) != Format::kQ4) return;
  const nn::Architecture& arch = nn::architecture(c.family);
  for (int layer = 0; layer < c.n_layer; ++layer) {
    for (const nn::ParamDecl& d : arch.layer_params(c, layer)) {
      for (int r = 0; r < tp; ++r) {
        const nn::ParamInfo info = nn::shard_for_tp(d, c, r, tp);
        if (info.packed) check_whole_q4_groups(info, d.in_out, c.packed_base_group, d.shape[d.in_out ? 0 : 1]);
      }
    }
  }
}

QuantMatrix slice_for_shard(const QuantMatrix& full, const nn::ParamInfo& info, bool in_out) {
  TRI_CHECK(full.format == Format::kInt8 || full.format == Format::kQ4, "{}: a packed base matrix is int8 or q4",
            info.name);
  const Shape want = in_out ? Shape{full.cols, full.rows} : Shape{full.rows, full.cols};
  TRI_CHECK(info.logical_shape == want, "{}: the quantized matrix is {} x {} ([out, in]) but the model declares {}",
            info.name, full.rows, full.cols, shape_str(info.logical_shape));
  if (info.shard.is_full()) return full;
  for (const nn::Chunk& c : info.shard.chunks) {
    TRI_CHECK(c.logical_begin >= 0, "{}: a packed matrix has no padding rows", info.name);
  }
  QuantMatrix m;
  m.format = full.format;
  m.group = full.group;
  const bool rows = info.shard.dim == (in_out ? 1 : 0);  // the split is along the outputs
  if (rows) {
    m.cols = full.cols;
    for (const nn::Chunk& c : info.shard.chunks) {
      for (int64_t o = c.logical_begin; o < c.logical_begin + c.length; ++o) append_row(m, full, o);
      m.rows += c.length;
    }
  } else {
    m.rows = full.rows;
    if (full.format == Format::kQ4) check_whole_q4_groups(info, in_out, full.group, full.cols);
    for (const nn::Chunk& c : info.shard.chunks) m.cols += c.length;
    const int64_t G = full.group;
    for (int64_t o = 0; o < full.rows; ++o) {
      const auto O = static_cast<std::size_t>(o);
      if (full.format == Format::kInt8) m.scale.push_back(full.scale[O]);  // per row: unchanged by a column split
      for (const nn::Chunk& c : info.shard.chunks) {
        const auto b = static_cast<std::size_t>(c.logical_begin), n = static_cast<std::size_t>(c.length);
        if (full.format == Format::kInt8) {
          const auto row = full.q8.begin() + static_cast<std::ptrdiff_t>(O * static_cast<std::size_t>(full.cols));
          m.q8.insert(m.q8.end(), row + static_cast<std::ptrdiff_t>(b), row + static_cast<std::ptrdiff_t>(b + n));
        } else {
          // Whole groups: their bytes, scales and offsets are contiguous runs of the row.
          const std::size_t bytes = O * static_cast<std::size_t>(full.cols) / 2;
          m.q4.insert(m.q4.end(), full.q4.begin() + static_cast<std::ptrdiff_t>(bytes + b / 2),
                      full.q4.begin() + static_cast<std::ptrdiff_t>(bytes + (b + n) / 2));
          const std::size_t g0 = O * static_cast<std::size_t>(full.groups_per_row()) + b / static_cast<std::size_t>(G);
          const std::size_t gn = n / static_cast<std::size_t>(G);
          m.scale.insert(m.scale.end(), full.scale.begin() + static_cast<std::ptrdiff_t>(g0),
                         full.scale.begin() + static_cast<std::ptrdiff_t>(g0 + gn));
          m.offset.insert(m.offset.end(), full.offset.begin() + static_cast<std::ptrdiff_t>(g0),
                          full.offset.begin() + static_cast<std::ptrdiff_t>(g0 + gn));
        }
      }
    }
  }
  if (m.format == Format::kInt8) m.finish_int8();
  return m;
}

PackedBase::PackedBase(nn::ParameterSet& params, MemoryTracker& tracker) : params_(params), tracker_(tracker) {
  const auto n = static_cast<std::size_t>(params_.size());
  local_.resize(n);
  in_out_.assign(n, false);
  loaded_.assign(n, false);
  std::vector<int64_t> group_floats(static_cast<std::size_t>(params_.num_groups()), 0);
  for (int id = 0; id < params_.size(); ++id) {
    const nn::ParamInfo& p = params_.info(id);
    if (p.packed) group_floats[static_cast<std::size_t>(p.group)] += shape_numel(p.local_shape);
  }
  const int64_t largest = group_floats.empty() ? 0 : *std::max_element(group_floats.begin(), group_floats.end());
  scratch_ = FloatBuffer(tracker_, MemCategory::kWorkspace, static_cast<std::size_t>(largest));
}

PackedBase::~PackedBase() {
  if (packed_bytes_ > 0) tracker_.release(MemCategory::kPackedBase, static_cast<std::size_t>(packed_bytes_));
}

void PackedBase::load(const nn::ParamDecl& decl, const QuantMatrix& full) {
  const int id = params_.find(decl.name);
  if (id < 0) return;  // another pipeline stage's
  const nn::ParamInfo& info = params_.info(id);
  TRI_CHECK(info.packed, "{} is not a packed base matrix of this run", decl.name);
  TRI_CHECK(!loaded_[static_cast<std::size_t>(id)], "{}: packed base loaded twice", decl.name);
  QuantMatrix m = slice_for_shard(full, info, decl.in_out);
  const int64_t bytes = m.weight_bytes();
  local_[static_cast<std::size_t>(id)] = std::move(m);
  in_out_[static_cast<std::size_t>(id)] = decl.in_out;
  loaded_[static_cast<std::size_t>(id)] = true;
  packed_bytes_ += bytes;
  tracker_.add(MemCategory::kPackedBase, static_cast<std::size_t>(bytes));
  current_ = -1;
}

void PackedBase::check_complete() const {
  for (int id = 0; id < params_.size(); ++id) {
    TRI_CHECK(!params_.info(id).packed || loaded_[static_cast<std::size_t>(id)],
              "{} is a packed base matrix but the quantized checkpoint gave it no values", params_.info(id).name);
  }
}

const QuantMatrix& PackedBase::matrix(int id) const {
  TRI_CHECK(params_.info(id).packed, "{} is not packed", params_.info(id).name);
  return local_.at(static_cast<std::size_t>(id));
}

void PackedBase::materialize(int group) {
  if (group == current_) return;  // the values never change: the scratch still holds them
  int64_t at = 0;
  for (int id = 0; id < params_.size(); ++id) {
    const nn::ParamInfo& p = params_.info(id);
    if (!p.packed || p.group != group) continue;
    const auto i = static_cast<std::size_t>(id);
    TRI_CHECK(loaded_[i], "{}: the packed base was not loaded before the model ran", p.name);
    float* dst = scratch_.data() + at;
    dequantize(local_[i], dst, in_out_[i]);
    params_.set_data_ptr(id, dst);
    at += shape_numel(p.local_shape);
  }
  current_ = group;
}

void PackedBase::before_group_forward(int group) {
  materialize(group);
  if (inner_) inner_->before_group_forward(group);
}

void PackedBase::before_group_backward(int group) {
  materialize(group);
  if (inner_) inner_->before_group_backward(group);
}

void PackedBase::after_group_backward(int group) {
  if (inner_) inner_->after_group_backward(group);
}

}  // namespace trident::quant
