// Evaluation over a RankLayout: the mean token loss of one global batch, forward only (no
// gradients, no optimizer). pp = 1 runs the micro-batches through the model; pp > 1 passes each
// micro-batch through the stages in order with blocking send/recv (no schedule needed).
#pragma once

#include "parallel/rank_layout.h"

namespace trident::parallel {

// Collective over the world; the same value on every rank.
double eval_loss(RankLayout& layout, const BatchFn& batch);

}  // namespace trident::parallel
