// Layout-independent batch sampling and fixed evaluation batches; see batch_sampler.h.
#include "data/batch_sampler.h"

#include <algorithm>

#include "core/check.h"
#include "core/rng.h"

namespace trident::data {
namespace {

// A stream of its own, so data offsets never reuse the counters of parameter init or dropout.
const uint64_t kSamplerStream = fnv1a64("trident.data.batch_sampler");

void copy_row(const TokenShard& shard, int64_t offset, int64_t seq_len, int32_t* inputs, int32_t* targets) {
  shard.copy(static_cast<size_t>(offset), static_cast<size_t>(seq_len), inputs);
  shard.copy(static_cast<size_t>(offset) + 1, static_cast<size_t>(seq_len), targets);
}

}  // namespace

DataOrder parse_data_order(const std::string& name) {
  if (name == "random") return DataOrder::kRandom;
  if (name == "sequential") return DataOrder::kSequential;
  TRI_FAIL("unknown data order '{}': use 'random' or 'sequential'", name);
}

namespace {
constexpr std::string_view kOrderNames[] = {"random", "sequential"};
}  // namespace

std::span<const std::string_view> data_order_names() { return kOrderNames; }

const char* data_order_name(DataOrder order) { return kOrderNames[static_cast<std::size_t>(order)].data(); }

BatchSampler::BatchSampler(const TokenShard& shard, const SamplerConfig& config) : shard_(&shard), config_(config) {
  const int64_t b = config.batch_size, t = config.seq_len;
  const auto n = static_cast<int64_t>(shard.size());
  TRI_CHECK(b > 0 && t > 0, "batch size ({}) and sequence length ({}) must be positive", b, t);
  if (config.order == DataOrder::kSequential) {
    TRI_CHECK(n >= b * t + 1,
              "token shard {} holds {} tokens, too few for one sequential batch of B*T+1 = {}*{}+1 = {} tokens; "
              "lower --batch-size or --seq-len, or prepare more text",
              shard.path(), n, b, t, b * t + 1);
    batches_per_pass_ = (n - 1) / (b * t);
  } else {
    TRI_CHECK(n >= t + 1,
              "token shard {} holds {} tokens, too few for one sequence of T+1 = {} tokens; lower --seq-len or "
              "prepare more text",
              shard.path(), n, t + 1);
  }
}

int64_t BatchSampler::row_offset(int64_t step, int64_t row) const {
  TRI_CHECK(step >= 0 && row >= 0 && row < config_.batch_size, "row {} of step {} is outside the global batch of {} rows",
            row, step, config_.batch_size);
  const int64_t t = config_.seq_len;
  if (config_.order == DataOrder::kSequential) {
    return (step % batches_per_pass_) * config_.batch_size * t + row * t;
  }
  // Offsets in [0, N - T - 1], uniform: 64 Philox bits scaled by a 128-bit multiply.
  const auto positions = static_cast<uint64_t>(static_cast<int64_t>(shard_->size()) - t);
  const auto s = static_cast<uint64_t>(step), r = static_cast<uint64_t>(row);
  const auto bits = philox4x32({static_cast<uint32_t>(r), static_cast<uint32_t>(r >> 32), static_cast<uint32_t>(s),
                                static_cast<uint32_t>(s >> 32)},
                               {static_cast<uint32_t>(config_.seed ^ kSamplerStream),
                                static_cast<uint32_t>((config_.seed ^ kSamplerStream) >> 32)});
  const uint64_t x = (static_cast<uint64_t>(bits[0]) << 32) | bits[1];
  return static_cast<int64_t>((static_cast<unsigned __int128>(x) * positions) >> 64);
}

void BatchSampler::fill(int64_t step, int64_t row_begin, int64_t row_count, int32_t* inputs, int32_t* targets) const {
  TRI_CHECK(row_begin >= 0 && row_count >= 0 && row_begin + row_count <= config_.batch_size,
            "rows [{}, {}) are outside the global batch of {} rows", row_begin, row_begin + row_count,
            config_.batch_size);
  const int64_t t = config_.seq_len;
  for (int64_t i = 0; i < row_count; ++i) {
    copy_row(*shard_, row_offset(step, row_begin + i), t, inputs + i * t, targets + i * t);
  }
}

EvalBatches::EvalBatches(const TokenShard& shard, int64_t batch_size, int64_t seq_len, int64_t max_batches)
    : shard_(&shard), batch_size_(batch_size), seq_len_(seq_len) {
  TRI_CHECK(batch_size > 0 && seq_len > 0, "batch size ({}) and sequence length ({}) must be positive", batch_size,
            seq_len);
  const auto n = static_cast<int64_t>(shard.size());
  const int64_t fit = n > 0 ? (n - 1) / (batch_size * seq_len) : 0;
  TRI_CHECK(fit >= 1,
            "validation shard {} holds {} tokens, too few for one eval batch of B*T+1 = {} tokens; lower "
            "--batch-size or --seq-len, or hold out more text",
            shard.path(), n, batch_size * seq_len + 1);
  num_batches_ = max_batches > 0 ? std::min(fit, max_batches) : fit;
}

void EvalBatches::fill(int64_t batch, int64_t row_begin, int64_t row_count, int32_t* inputs, int32_t* targets) const {
  TRI_CHECK(batch >= 0 && batch < num_batches_, "eval batch {} is outside [0, {})", batch, num_batches_);
  TRI_CHECK(row_begin >= 0 && row_count >= 0 && row_begin + row_count <= batch_size_,
            "rows [{}, {}) are outside the eval batch of {} rows", row_begin, row_begin + row_count, batch_size_);
  for (int64_t i = 0; i < row_count; ++i) {
    const int64_t offset = (batch * batch_size_ + row_begin + i) * seq_len_;
    copy_row(*shard_, offset, seq_len_, inputs + i * seq_len_, targets + i * seq_len_);
  }
}

}  // namespace trident::data
