// The frozen base of a QLoRA run (Dettmers et al. 2023, on Trident's own formats): every layer
// matrix (nn::is_packable) of one rank's model chunk stays packed as `trident quantize` wrote
// it (int8 per output row, or q4 per group of inputs; quant/quant_format.h) and is registered
// ParamInfo::packed, so the flat value and gradient buffers hold none of it. Just before a
// layer group runs, forward or backward (dx = dy W needs W too), its packed matrices are
// dequantized (quant::dequantize, the values `trident dequantize` writes) into one scratch
// buffer sized for the largest group, laid out in registration order so a fused run
// (q|k|v, gate|up) is still one matrix, and the ParameterSet's pointers are aimed there. So
// the fp32 copy of the base never exists for more than one layer at a time, and the
// linear layers are LoRA's unchanged (their frozen path computes no weight gradient).
//
// Tensor parallelism slices the packed matrix like its fp32 parameter: a split of the outputs
// takes whole rows (with their scales and offsets); a split of the inputs takes whole q4
// groups, and a split that would cut a group is one clear error (int8's scale is per row, so
// any column split works).
//
// It is the chunk's ModelHooks (dequantize, then hand on to the data-parallel reducer's, which
// under ZeRO-2/3 re-aims the flat parameters only, never a packed one).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/memory.h"
#include "nn/param_decl.h"
#include "nn/parameters.h"
#include "nn/tensor_parallel.h"
#include "quant/quant_format.h"

namespace trident::quant {

class PackedBase : public nn::ModelHooks {
 public:
  PackedBase(nn::ParameterSet& params, MemoryTracker& tracker);
  ~PackedBase() override;
  PackedBase(const PackedBase&) = delete;
  PackedBase& operator=(const PackedBase&) = delete;

  // The hooks that run after the dequantization (the reducer's), or none.
  void set_inner(nn::ModelHooks* inner) { inner_ = inner; }
  // Takes this rank's slice of `full`, the whole packed matrix of `decl` ([out, in]), when the
  // chunk holds `decl` (a no-op otherwise). Throws, naming the matrix, when its shape is not the
  // declaration's or a tp split would cut a q4 group.
  void load(const nn::ParamDecl& decl, const QuantMatrix& full);
  // After every load: throws naming the first packed parameter that got no matrix.
  void check_complete() const;

  int64_t packed_bytes() const { return packed_bytes_; }  // what kPackedBase tracks
  // This rank's packed slice of parameter `id` (tests).
  const QuantMatrix& matrix(int id) const;

  void before_group_forward(int group) override;
  void before_group_backward(int group) override;
  void after_group_backward(int group) override;

 private:
  void materialize(int group);

  nn::ParameterSet& params_;
  MemoryTracker& tracker_;
  nn::ModelHooks* inner_ = nullptr;
  std::vector<QuantMatrix> local_;  // per parameter id (empty unless packed)
  std::vector<bool> in_out_;        // per parameter id: Conv1D [in, out]
  std::vector<bool> loaded_;
  FloatBuffer scratch_;             // the largest group's packed parameters, fp32
  int current_ = -1;                // the group the scratch holds
  int64_t packed_bytes_ = 0;
};

// The rule a tp split of a packed q4 matrix must keep (what slice_for_shard enforces): an input
// split takes whole groups of `group` inputs. `info` is this rank's slice of a matrix of `cols`
// inputs (Conv1D [in, out] when in_out). Throws, naming the matrix and the fix, when it does not.
void check_whole_q4_groups(const nn::ParamInfo& info, bool in_out, int group, int64_t cols);
// The same rule for every tp rank's slice of every matrix a QLoRA model shaped `c` holds packed
// (nn::shard_for_tp, as the run registers them): `trident plan` rejects a tp this throws for.
void check_packed_tp_split(const nn::ModelConfig& c, int tp);

// This tp rank's slice of `full` (a matrix [out, in]) as `info` describes it: `info.shard`
// along the declared layout's dim (Conv1D [in, out] when in_out). Throws when an input split
// would cut a q4 group.
QuantMatrix slice_for_shard(const QuantMatrix& full, const nn::ParamInfo& info, bool in_out);

}  // namespace trident::quant
