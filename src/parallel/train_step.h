// One training step over a RankLayout: the micro-batches (pp = 1) or the pipeline schedule's
// instruction list (pp > 1) run forward and backward, the dp reduction is waited for, a tied
// parameter's two gradients are summed between the first and last stage, the global gradient
// norm counts every unique element once, and AdamW (optionally ZeRO-sharded) applies the
// clipped update (fp16: on the loss-scaled gradients, unscaled in AdamW), unless the loss or the norm was not finite anywhere (then no rank applies it).
#pragma once

#include <cstdint>
#include <vector>

#include "parallel/rank_layout.h"

namespace trident::parallel {

struct StepStats {
  double loss = 0.0;       // mean over every token of the global batch
  double grad_norm = 0.0;  // global L2 norm before clipping
  // Mixture of experts: the load-balancing loss (unweighted) averaged over every MoE layer and
  // every sequence of the global batch; 0 for dense models. Not part of `loss`.
  double aux_loss = 0.0;
  // Mixture of experts: the router z-loss (unweighted) averaged over every MoE layer and every
  // token of the global batch; 0 for dense models. Not part of `loss`.
  double z_loss = 0.0;
  // Mixture of experts: (MoE layers, E) tokens of the global batch routed to the experts of each
  // layer past the first_k_dense
  // (each token counted once per expert it reached, so a layer's row sums to k x tokens);
  // empty for dense models. Equal in every layout when routing is.
  std::vector<int64_t> expert_load;
  // Mixture of experts: per MoE layer, the wrapping sum over the global batch of nn::routing_hash
  // (which token positions chose which experts, kept or dropped): equal in every layout when
  // routing is; empty for dense models.
  std::vector<uint64_t> routing_hash;
  // Mixture of experts with a capacity factor: the fraction of the global batch's routed
  // (token, expert) pairs dropped over capacity, over every layer (nn/moe_router.h); else 0.
  double dropped_fraction = 0.0;
  float clip_scale = 1.0f;
  double comm_wait_s = 0.0;  // time blocked on dp communication (exposed, not overlapped)
  // The loss or the grad norm was not finite somewhere in the world: no rank applied the
  // update (weights, AdamW moments and step counter unchanged). What to do next is the
  // caller's policy (train/nonfinite_policy.h).
  bool skipped = false;
  // --precision fp16: the loss scale this step's backward ran with (0 otherwise), and whether
  // the step was skipped because its scaled gradients overflowed while its loss was finite
  // above the minimum scale (the scaler's business, not a poisoned step: the scale is lowered
  // for the next step).
  double loss_scale = 0.0;
  bool overflow = false;
};

// Collective over the world. `batch` fills this rank's rows of the step's global batch.
StepStats train_step(RankLayout& layout, const BatchFn& batch, float lr);

}  // namespace trident::parallel
