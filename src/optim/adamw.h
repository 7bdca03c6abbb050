// AdamW (decoupled weight decay, as torch.optim.AdamW) over a range of the flat parameter
// buffer. The range is the whole model for one process or this rank's ZeRO shard; moments are
// held for that range only. Weight decay applies to matrices and embeddings, never to biases
// or LayerNorm parameters (ParamInfo::weight_decay). The moments live in a MomentStore (in
// memory, or offloaded to disk: optim/moment_store.h), which hands them over block by block.
// Frozen parameters (a LoRA run's base, nn/lora.h) are not optimised and have no moments: the
// store holds the range's trainable elements only, in flat order (store_index maps).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/memory.h"
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

class AdamW {
 public:
  // Optimises flat elements [begin, end) of `params` (end < 0: to the end), with the moments
  // in `store` (null: in memory; else its size must be moment_count(params, begin, end)).
  AdamW(const nn::ParameterSet& params, MemoryTracker& tracker, const AdamWConfig& cfg,
        int64_t begin = 0, int64_t end = -1, std::unique_ptr<MomentStore> store = nullptr);

  // One update of the owned range: values[i] from grads[i] * grad_scale. `values` and `grads`
  // point at the start of the owned range (which may be a separate shard buffer).
  void step(float* values, const float* grads, float lr, float grad_scale);

  // Elements of [begin, end) (end < 0: to the end) that are trained (not frozen): the moments held.
  static int64_t moment_count(const nn::ParameterSet& params, int64_t begin = 0, int64_t end = -1);
  // Index into the moment store of flat element `flat` (in [begin(), end()), of a trained parameter).
  int64_t store_index(int64_t flat) const;

  int64_t step_count() const { return t_; }
  void set_step_count(int64_t t) { t_ = t; }
  int64_t begin() const { return begin_; }
  int64_t end() const { return end_; }
  // exp_avg and exp_avg_sq of the trained elements of [begin, end), indexed by store_index.
  MomentStore& moments() { return *store_; }
  const MomentStore& moments() const { return *store_; }

 private:
  struct Range {
    int64_t begin, end;  // relative to begin_
    bool decay;
    int64_t store;  // the moment store's index of `begin`
  };
  AdamWConfig cfg_;
  int64_t begin_ = 0, end_ = 0;
  std::vector<Range> ranges_;
  std::unique_ptr<MomentStore> store_;
  int64_t t_ = 0;
};

}  // namespace trident::optim
