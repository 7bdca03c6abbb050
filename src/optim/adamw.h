// AdamW (decoupled weight decay, as torch.optim.AdamW) over owned ranges of the flat parameter
// buffer: the whole model for one process, or this rank's ZeRO shard (one range, or under
// expert parallelism one per ZeRO segment: parallel/zero.h); moments are held for those only. Weight decay applies to matrices and embeddings, never to biases
// or LayerNorm parameters (ParamInfo::weight_decay). The moments live in a MomentStore (in
// memory, or offloaded to disk: optim/moment_store.h), which hands them over block by block.
// Frozen parameters (a LoRA run's base, nn/lora.h) are not optimised and have no moments: the
// store holds the range's trainable elements only, in flat order (store_index maps).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "core/memory.h"
#include "kernels/half.h"
#include "nn/parameters.h"
#include "optim/moment_store.h"

namespace trident::optim {

// Held in double as the run config gives them (trident.json keeps the values as written); the
// update kernel takes them rounded to float.
struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

// The gradients step() reads: fp32, or 16-bit words (--grad-dtype bf16|fp16: ZeRO-2/3's shard,
// parallel/grad_shard.h), each widened exactly, the update's arithmetic unchanged (so the bits
// are those of the fp32 step on the widened values).
struct GradsIn {
  const float* f32 = nullptr;
  const uint16_t* bits = nullptr;
  kernels::Half half = kernels::Half::kBf16;
  GradsIn(const float* g) : f32(g) {}  // NOLINT: implicit, an fp32 buffer is the common case
  GradsIn(const uint16_t* g, kernels::Half h) : bits(g), half(h) {}
};

class AdamW {
 public:
  // Optimises flat elements [begin, end) of `params` (end < 0: to the end), with the moments
  // in `store` (null: in memory; else its size must be moment_count(params, begin, end)).
  AdamW(const nn::ParameterSet& params, MemoryTracker& tracker, const AdamWConfig& cfg,
        int64_t begin = 0, int64_t end = -1, std::unique_ptr<MomentStore> store = nullptr);
  // Optimises the flat ranges `owned` (ascending, disjoint). Their concatenation is the "owned
  // order" step() indexes by default (a ZeRO shard buffer).
  using FlatRange = std::pair<int64_t, int64_t>;
  AdamW(const nn::ParameterSet& params, MemoryTracker& tracker, const AdamWConfig& cfg,
        const std::vector<FlatRange>& owned, std::unique_ptr<MomentStore> store = nullptr);

  // Where a buffer handed to step() starts: at the first owned element, in owned order (a
  // shard buffer), or at flat element 0 (the full flat buffer, of which the owned ranges are
  // updated in place). For the gradients kFlat means the parameter set's flat gradient buffer,
  // laid out by ParamInfo::grad_offset (the trained parameters only; the value layout when
  // nothing is frozen).
  enum class At { kOwned, kFlat };
  // One update of the owned ranges: values[i] from grads[i] * grad_scale. When the moment
  // store holds the values (--offload optimizer+params), they are updated there and `values`
  // is not read (pass null).
  void step(float* values, GradsIn grads, float lr, float grad_scale, At values_at = At::kOwned,
            At grads_at = At::kOwned);
  // Where the values of owned flat elements [flat, flat + n) are: a pointer to the first and how
  // many follow it contiguously (1 to n), given the store's block they are updated in (whose
  // values part holds some elements' values when the store keeps ZeRO-1/2's master offloaded).
  // One update then takes its values from more than one buffer (ZeRO-1/2's sharded master: the
  // operand-only parameters' from the shard or the block, the others' from the flat buffer,
  // parallel/zero_master.h); AdamW is elementwise, so the split keeps the bits. `done` (may be
  // empty) sees each block after its update, before the store writes it back.
  using ValuesAt = std::function<std::pair<float*, int64_t>(int64_t flat, int64_t n, const MomentStore::Block& b)>;
  using BlockDone = std::function<void(const MomentStore::Block& b)>;
  void step(const ValuesAt& values, GradsIn grads, float lr, float grad_scale, At grads_at,
            const BlockDone& done = {});

  // Elements of [begin, end) (end < 0: to the end) that are trained (not frozen): the moments held.
  static int64_t moment_count(const nn::ParameterSet& params, int64_t begin = 0, int64_t end = -1);
  static int64_t moment_count(const nn::ParameterSet& params, const std::vector<FlatRange>& owned);
  // Index into the moment store of flat element `flat` (owned, of a trained parameter).
  int64_t store_index(int64_t flat) const;
  // The owned part of flat range [lo, hi), which must meet at most one owned range (a
  // parameter does: it lies in one ZeRO segment); {lo, lo} when none.
  FlatRange owned_part(int64_t lo, int64_t hi) const;
  const std::vector<FlatRange>& owned() const { return owned_; }

  int64_t step_count() const { return t_; }
  void set_step_count(int64_t t) { t_ = t; }
  // exp_avg and exp_avg_sq of the trained owned elements, indexed by store_index.
  MomentStore& moments() { return *store_; }
  const MomentStore& moments() const { return *store_; }

 private:
  struct Range {
    int64_t begin, end;  // in owned order
    int64_t flat;        // the flat index of `begin`
    int64_t grad;        // its index in the flat gradient buffer (ParamInfo::grad_offset)
    bool decay;
    int64_t store;  // the moment store's index of `begin`
  };
  AdamWConfig cfg_;
  std::vector<FlatRange> owned_;
  std::vector<Range> ranges_;
  std::unique_ptr<MomentStore> store_;
  int64_t t_ = 0;
};

}  // namespace trident::optim
