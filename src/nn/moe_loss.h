// The mixture of experts' auxiliary objectives (nn/moe_mlp.h): the load-balancing loss, one
// term per (layer, sequence), and the router z-loss, one term per (layer, token). Their weights
// in the training objective, and their unweighted sums for the metrics, travel together through
// Layer, Model and the engine.
#pragma once

namespace trident::nn {

struct MoeLossWeights {
  float aux = 0.0f;  // per unit of a (layer, sequence) balance term: coef / (layers x sequences)
  float z = 0.0f;    // per unit of a (layer, token) z term: z coef / (layers x tokens)
};

struct MoeLossSums {
  double aux = 0.0;  // balance terms, summed over (layer, sequence)
  double z = 0.0;    // z terms, summed over (layer, token)
  // Not a loss: routed (token, expert) pairs dropped over capacity (nn/moe_router.h), summed
  // over (layer, token); a count, exact in double, travelling with the sums above.
  double dropped = 0.0;
  MoeLossSums& operator+=(const MoeLossSums& o) {
    aux += o.aux;
    z += o.z;
    dropped += o.dropped;
    return *this;
  }
};

}  // namespace trident::nn
