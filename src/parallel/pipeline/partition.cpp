// Even and cost-balanced layer splits over pipeline chunks.
#include "parallel/pipeline/partition.h"

#include <fmt/format.h>

#include <cmath>

#include "core/check.h"

namespace trident::pp {

Partition partition_layers(int n_layer, const PartitionOptions& o) {
  TRI_CHECK(o.pp >= 1, "pipeline size (--pp) must be >= 1, got {}", o.pp);
  TRI_CHECK(o.virtual_stages >= 1, "--virtual-stages must be >= 1, got {}", o.virtual_stages);
  TRI_CHECK(o.virtual_stages == 1 || o.pp >= 2,
            "--virtual-stages {} needs --pp >= 2 (interleaving chunks on one rank gains nothing)",
            o.virtual_stages);
  const int S = o.pp * o.virtual_stages;
  TRI_CHECK(S <= n_layer,
            "more pipeline stages than layers: pp({}) * virtual_stages({}) = {} chunks but the "
            "model has n_layer {}; every chunk needs at least one layer. Lower --pp or "
            "--virtual-stages",
            o.pp, o.virtual_stages, S, n_layer);
  TRI_CHECK(o.virtual_stages == 1 || n_layer % S == 0,
            "the interleaved schedule needs n_layer ({}) divisible by pp({}) * "
            "virtual_stages({}) = {}; choose --virtual-stages so that it divides",
            n_layer, o.pp, o.virtual_stages, S);
  TRI_CHECK(!o.balance_cost || o.virtual_stages == 1,
            "the cost-balanced split (--balance-stages) supports --virtual-stages 1 only; drop "
            "one of the two");
  TRI_CHECK(o.embedding_cost >= 0 && o.head_cost >= 0, "stage costs must be >= 0");
  TRI_CHECK(o.layer_costs.empty() || static_cast<int>(o.layer_costs.size()) == n_layer,
            "layer costs: {} given for {} layers", o.layer_costs.size(), n_layer);
  for (double c : o.layer_costs) TRI_CHECK(c >= 0 && std::isfinite(c), "layer costs must be finite and >= 0");

  Partition p;
  p.pp = o.pp;
  p.virtual_stages = o.virtual_stages;
  p.n_layer = n_layer;
  std::vector<int> counts(static_cast<std::size_t>(S), n_layer / S);
  for (int s = 0; s < n_layer % S; ++s) ++counts[static_cast<std::size_t>(s)];
  if (o.balance_cost && S > 1) {
    // Greedy on the cumulative cost: chunk s ends at the layer boundary closest to
    // (s + 1) / S of the total, keeping at least one layer per remaining chunk.
    // before[l] = cost of layers [0, l), summed in layer order.
    std::vector<double> before(static_cast<std::size_t>(n_layer) + 1, 0.0);
    for (int l = 0; l < n_layer; ++l) {
      before[l + 1] = before[l] + (o.layer_costs.empty() ? 1.0 : o.layer_costs[static_cast<std::size_t>(l)]);
    }
    const double total = before.back() + o.embedding_cost + o.head_cost;
    int begin = 0;
    for (int s = 0; s < S - 1; ++s) {
      const double target = total * (s + 1) / S;
      int best = begin + 1;
      double best_err = 1e300;
      for (int end = begin + 1; end <= n_layer - (S - 1 - s); ++end) {
        const double cost = o.embedding_cost + before[end];  // cost of chunks 0..s
        const double err = std::fabs(cost - target);
        if (err < best_err) best_err = err, best = end;
      }
      counts[static_cast<std::size_t>(s)] = best - begin;
      begin = best;
    }
    counts.back() = n_layer - begin;
  }
  int layer = 0;
  for (int s = 0; s < S; ++s) {
    nn::StageSpec spec;
    spec.layer_begin = layer;
    layer += counts[static_cast<std::size_t>(s)];
    spec.layer_end = layer;
    spec.has_embedding = s == 0;
    spec.has_head = s == S - 1;
    p.chunks.push_back(spec);
  }
  return p;
}

std::string Partition::describe() const {
  std::string out = fmt::format("pipeline: {} layers over pp {} x {} chunk(s) per rank\n",
                                n_layer, pp, virtual_stages);
  for (int r = 0; r < pp; ++r) {
    out += fmt::format("  pp rank {}:", r);
    for (int c = 0; c < virtual_stages; ++c) {
      const nn::StageSpec& s = chunk(r, c);
      out += fmt::format("{} chunk {} = {}layers [{}, {}){}", c ? ";" : "", global_chunk(pp, r, c),
                         s.has_embedding ? "embedding + " : "", s.layer_begin, s.layer_end,
                         s.has_head ? " + ln_f + head" : "");
    }
    out += "\n";
  }
  return out;
}

}  // namespace trident::pp
