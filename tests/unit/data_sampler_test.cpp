// Batch sampler: the global batch of a step depends on (seed, step) only, whatever the split
// into ranks or micro-batches; sequential order follows llm.c; eval batches are fixed.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>
#include <vector>

#include <unistd.h>

#include "core/check.h"
#include "data/batch_sampler.h"
#include "data/token_shard.h"

namespace trident::data {
namespace {

namespace fs = std::filesystem;

class DataSampler : public ::testing::Test {
 protected:
  static constexpr size_t kTokens = 5000;
  void SetUp() override {
    path_ = (fs::temp_directory_path() / ("trident_data_sampler_test_" + std::to_string(::getpid()) + ".bin")).string();
    tokens_.resize(kTokens);
    for (size_t i = 0; i < kTokens; ++i) tokens_[i] = static_cast<int32_t>((i * 31 + i / 7) % 50257);
    write_token_shard(path_, tokens_);
    shard_ = TokenShard::open(path_, 50257);
  }
  void TearDown() override { fs::remove(path_); }

  std::string path_;
  std::vector<int32_t> tokens_;
  TokenShard shard_;
};

// Fills the whole global batch of `step` through splits of the given row counts.
std::pair<std::vector<int32_t>, std::vector<int32_t>> gather(const BatchSampler& s, int64_t step,
                                                             const std::vector<int64_t>& splits) {
  const int64_t b = s.config().batch_size, t = s.config().seq_len;
  std::vector<int32_t> in(b * t, -1), tg(b * t, -1);
  int64_t row = 0;
  for (int64_t n : splits) {
    s.fill(step, row, n, in.data() + row * t, tg.data() + row * t);
    row += n;
  }
  EXPECT_EQ(row, b);
  return {in, tg};
}

TEST_F(DataSampler, SameGlobalBatchWhateverTheSplit) {
  for (auto order : {DataOrder::kRandom, DataOrder::kSequential}) {
    const BatchSampler s(shard_, {.batch_size = 8, .seq_len = 16, .seed = 1234, .order = order});
    for (int64_t step : {0, 1, 7, 100, 12345}) {
      const auto whole = gather(s, step, {8});
      for (const auto& split : std::vector<std::vector<int64_t>>{{4, 4}, {2, 2, 2, 2}, {1, 1, 1, 1, 1, 1, 1, 1}, {3, 5},
                                                                 {1, 0, 7}}) {
        EXPECT_EQ(gather(s, step, split), whole) << data_order_name(order) << " step " << step;
      }
      // A second sampler (another rank) computes the same batch.
      const BatchSampler other(shard_, {.batch_size = 8, .seq_len = 16, .seed = 1234, .order = order});
      EXPECT_EQ(gather(other, step, {5, 3}), whole);
    }
  }
}

TEST_F(DataSampler, TargetsAreInputsShiftedByOne) {
  const BatchSampler s(shard_, {.batch_size = 4, .seq_len = 32, .seed = 9, .order = DataOrder::kRandom});
  for (int64_t step = 0; step < 20; ++step) {
    const auto [in, tg] = gather(s, step, {4});
    for (int64_t r = 0; r < 4; ++r) {
      const int64_t off = s.row_offset(step, r);
      ASSERT_GE(off, 0);
      ASSERT_LE(off + 32, static_cast<int64_t>(kTokens) - 1);
      for (int64_t t = 0; t < 32; ++t) {
        ASSERT_EQ(in[r * 32 + t], tokens_[off + t]);
        ASSERT_EQ(tg[r * 32 + t], tokens_[off + t + 1]);
      }
    }
  }
}

TEST_F(DataSampler, RandomOffsetsDependOnSeedAndStepAndCoverTheShard) {
  const BatchSampler a(shard_, {.batch_size = 4, .seq_len = 16, .seed = 1, .order = DataOrder::kRandom});
  const BatchSampler b(shard_, {.batch_size = 4, .seq_len = 16, .seed = 2, .order = DataOrder::kRandom});
  EXPECT_NE(gather(a, 0, {4}), gather(b, 0, {4}));
  EXPECT_NE(gather(a, 0, {4}), gather(a, 1, {4}));
  // On (seed, step, row) only: not on what was drawn before (a sampler used for 100 other
  // steps and a fresh one agree), nor on the batch size (row r of a batch of 8 is row r of a
  // batch of 4), and the rows of one step are different draws.
  const auto step3 = gather(a, 3, {4});
  for (int64_t step = 0; step < 100; ++step) gather(a, step, {4});
  const BatchSampler fresh(shard_, {.batch_size = 4, .seq_len = 16, .seed = 1, .order = DataOrder::kRandom});
  EXPECT_EQ(gather(a, 3, {4}), step3);
  EXPECT_EQ(gather(fresh, 3, {4}), step3);
  const BatchSampler wide(shard_, {.batch_size = 8, .seq_len = 16, .seed = 1, .order = DataOrder::kRandom});
  for (int64_t r = 0; r < 4; ++r) EXPECT_EQ(wide.row_offset(3, r), a.row_offset(3, r)) << "row " << r;
  std::set<int64_t> rows;
  for (int64_t r = 0; r < 4; ++r) rows.insert(a.row_offset(3, r));
  EXPECT_EQ(rows.size(), 4u);
  std::set<int64_t> offsets;
  int64_t max_off = 0;
  for (int64_t step = 0; step < 2000; ++step) {
    for (int64_t r = 0; r < 4; ++r) {
      offsets.insert(a.row_offset(step, r) / 500);  // 10 buckets
      max_off = std::max(max_off, a.row_offset(step, r));
    }
  }
  EXPECT_EQ(offsets.size(), 10u);
  EXPECT_LE(max_off, static_cast<int64_t>(kTokens) - 17);
}

TEST_F(DataSampler, SequentialMatchesLlmC) {
  const int64_t B = 4, T = 64;
  const BatchSampler s(shard_, {.batch_size = B, .seq_len = T, .seed = 0, .order = DataOrder::kSequential});
  // llm.c's loader: p starts at 0, advances by B*T, resets to 0 when p + B*T + 1 > N.
  int64_t p = 0;
  for (int64_t step = 0; step < 50; ++step) {
    const auto [in, tg] = gather(s, step, {1, 3});
    for (int64_t i = 0; i < B * T; ++i) {
      ASSERT_EQ(in[i], tokens_[p + i]) << "step " << step;
      ASSERT_EQ(tg[i], tokens_[p + i + 1]) << "step " << step;
    }
    p += B * T;
    if (p + B * T + 1 > static_cast<int64_t>(kTokens)) p = 0;
  }
}

TEST_F(DataSampler, EvalBatchesAreFixedAndTileTheShard) {
  const EvalBatches eval(shard_, 4, 100, 0);
  EXPECT_EQ(eval.num_batches(), (5000 - 1) / 400);
  EXPECT_EQ(EvalBatches(shard_, 4, 100, 3).num_batches(), 3);
  std::vector<int32_t> in(400), tg(400), in2(400), tg2(400);
  for (int64_t k = 0; k < eval.num_batches(); ++k) {
    eval.fill(k, 0, 4, in.data(), tg.data());
    eval.fill(k, 0, 1, in2.data(), tg2.data());
    eval.fill(k, 1, 3, in2.data() + 100, tg2.data() + 100);
    EXPECT_EQ(in, in2);
    EXPECT_EQ(tg, tg2);
    for (int64_t i = 0; i < 400; ++i) {
      ASSERT_EQ(in[i], tokens_[k * 400 + i]);
      ASSERT_EQ(tg[i], tokens_[k * 400 + i + 1]);
    }
  }
  EXPECT_THROW(eval.fill(eval.num_batches(), 0, 1, in.data(), tg.data()), Error);
}

TEST_F(DataSampler, ClearErrors) {
  EXPECT_THROW(BatchSampler(shard_, {.batch_size = 100, .seq_len = 64, .order = DataOrder::kSequential}), Error);
  EXPECT_THROW(BatchSampler(shard_, {.batch_size = 1, .seq_len = 5000, .order = DataOrder::kRandom}), Error);
  EXPECT_THROW(EvalBatches(shard_, 8, 1000), Error);
  const BatchSampler s(shard_, {.batch_size = 4, .seq_len = 8});
  std::vector<int32_t> in(64), tg(64);
  EXPECT_THROW(s.fill(0, 3, 2, in.data(), tg.data()), Error);
  EXPECT_THROW(parse_data_order("shuffled"), Error);
  EXPECT_EQ(parse_data_order("sequential"), DataOrder::kSequential);
}

}  // namespace
}  // namespace trident::data
