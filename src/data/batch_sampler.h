// Batches from a token shard, defined by (seed, step) only so every layout sees the same data:
// the global batch of a step is B rows of T+1 consecutive tokens (inputs = the first T,
// targets = the last T); a dp rank or micro-batch asks for rows [row_begin, row_begin + n)
// of it. What a rank's slice is (dp rank * rows per rank, ...) is left to the training loop.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "data/token_shard.h"

namespace trident::data {

enum class DataOrder {
  kRandom,      // row r of step s starts at an offset drawn by Philox from (seed, s, r)
  kSequential,  // llm.c: step s reads tokens[p : p + B*T + 1], p = (s mod nb) * B*T,
                // nb = (N - 1) / (B*T) batches per pass, so the last partial batch is skipped
};

struct SamplerConfig {
  int64_t batch_size = 0;  // B: rows of the *global* batch
  int64_t seq_len = 0;     // T
  uint64_t seed = 0;
  DataOrder order = DataOrder::kRandom;
};

// The spellings, indexed by the enum's value: "random", "sequential".
std::span<const std::string_view> data_order_names();
// Parses "random" / "sequential"; the error lists the valid names.
DataOrder parse_data_order(const std::string& name);
const char* data_order_name(DataOrder order);

// The shard must outlive the sampler.
class BatchSampler {
 public:
  // Validates the config against the shard (the shard must hold more than B*T tokens for
  // sequential order, more than T for random order).
  BatchSampler(const TokenShard& shard, const SamplerConfig& config);

  // First token of row `row` of the global batch of `step`.
  int64_t row_offset(int64_t step, int64_t row) const;

  // Writes rows [row_begin, row_begin + row_count) of step's global batch: inputs and targets
  // are (row_count, T), row-major.
  void fill(int64_t step, int64_t row_begin, int64_t row_count, int32_t* inputs, int32_t* targets) const;

  const SamplerConfig& config() const { return config_; }

 private:
  const TokenShard* shard_;
  SamplerConfig config_;
  int64_t batches_per_pass_ = 0;  // sequential order
};

// Fixed evaluation batches over a (validation) shard: batch k, row r reads the T+1 tokens at
// (k*B + r)*T, so the batches tile the front of the shard without overlap and never change.
// Rows can be split across ranks exactly like BatchSampler's.
class EvalBatches {
 public:
  // max_batches <= 0: as many as fit.
  EvalBatches(const TokenShard& shard, int64_t batch_size, int64_t seq_len, int64_t max_batches = 0);
  int64_t num_batches() const { return num_batches_; }
  void fill(int64_t batch, int64_t row_begin, int64_t row_count, int32_t* inputs, int32_t* targets) const;

 private:
  const TokenShard* shard_;
  int64_t batch_size_, seq_len_, num_batches_;
};

}  // namespace trident::data
