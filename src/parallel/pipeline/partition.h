// Pipeline stage partitioning: which transformer layers each pipeline chunk holds. With
// pp ranks and V virtual stages (chunks) per rank there are S = pp * V chunks; global chunk
// s lives on pp rank s % pp as that rank's local chunk s / pp (Megatron's interleaving), so
// with V = 1 chunk s is simply rank s. The first chunk has the embedding, the last has ln_f
// and the tied LM head. Building the GPT objects from the specs is left to the caller.
#pragma once

#include <string>
#include <vector>

#include "nn/model.h"

namespace trident::pp {

struct PartitionOptions {
  int pp = 1;              // pipeline ranks
  int virtual_stages = 1;  // chunks per rank (V); > 1 for the interleaved schedule
  // Balance by cost instead of layer count: the embedding counts as `embedding_cost` layers
  // on the first chunk and ln_f + head as `head_cost` layers on the last (V = 1 only).
  bool balance_cost = false;
  double embedding_cost = 1.0;
  double head_cost = 1.0;
  // With balance_cost: layer l costs layer_costs[l] (the unit embedding_cost and head_cost
  // are in), so a model whose layers differ (dense layers before MoE ones) balances by what
  // each costs; empty means every layer costs 1.
  std::vector<double> layer_costs = {};
};

struct Partition {
  int pp = 1;
  int virtual_stages = 1;
  int n_layer = 0;
  std::vector<nn::StageSpec> chunks;  // by global chunk index s in [0, pp * V)

  int num_chunks() const { return static_cast<int>(chunks.size()); }
  static int global_chunk(int pp, int rank, int local) { return rank + local * pp; }
  static int rank_of(int pp, int global) { return global % pp; }
  static int local_of(int pp, int global) { return global / pp; }
  // The spec of `rank`'s local chunk `local` (0 <= local < V).
  const nn::StageSpec& chunk(int rank, int local) const {
    return chunks.at(static_cast<std::size_t>(global_chunk(pp, rank, local)));
  }
  // One line per rank for start-up logs:
  //   "pp rank 0: chunk 0 = embedding + layers [0, 4)"
  std::string describe() const;
};

// Splits n_layer layers over pp * V chunks as evenly as possible (the first n_layer % S
// chunks get one extra layer), or by cost (PartitionOptions::balance_cost). Throws
// trident::Error for: pp < 1, V < 1, V > 1 with pp < 2, more chunks than layers, V > 1 with
// n_layer not divisible by pp * V (Megatron's rule), balance_cost with V > 1.
Partition partition_layers(int n_layer, const PartitionOptions& options);

}  // namespace trident::pp
