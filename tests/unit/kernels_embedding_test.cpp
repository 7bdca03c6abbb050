// Tests of token/position embeddings and the residual add: forward, accumulating backward,
// tensor-parallel row ranges, and bitwise determinism of the scatter-add across thread counts.
#include <omp.h>

#include "kernels/kernels.h"
#include "kernels_testing.h"

namespace trident::kernels {
namespace {
using testing::random_floats;

std::vector<int32_t> random_ids(int64_t n, int32_t lo, int32_t hi, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int32_t> dist(lo, hi);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = dist(gen);
  return ids;
}

TEST(Embedding, ForwardCopiesRowsInRangeAndZeroesOthers) {
  const int64_t N = 23, C = 13, row_begin = 10, rows = 7;  // this rank holds ids 10..16
  const auto table = random_floats(rows * C, 1);
  const auto ids = random_ids(N, 0, 30, 2);
  std::vector<float> out(static_cast<size_t>(N * C), 42.0f);
  embedding_forward(out.data(), ids.data(), table.data(), N, C, row_begin, rows);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t r = ids[static_cast<size_t>(n)] - row_begin;
    for (int64_t c = 0; c < C; ++c) {
      const float expected = (r >= 0 && r < rows) ? table[static_cast<size_t>(r * C + c)] : 0.0f;
      EXPECT_EQ(out[static_cast<size_t>(n * C + c)], expected) << "n=" << n << " c=" << c;
    }
  }
}

TEST(Embedding, BackwardScatterAddsAndAccumulates) {
  const int64_t N = 41, C = 19, row_begin = 5, rows = 9;
  const auto dout = random_floats(N * C, 3);
  const auto ids = random_ids(N, 0, 20, 4);
  const auto d0 = random_floats(rows * C, 5);
  auto dtable = d0;
  embedding_backward(dtable.data(), dout.data(), ids.data(), N, C, row_begin, rows);
  // Reference: sum in double. Each element adds at most N terms in [-1, 1] in token order;
  // fp32 error <= N * 6e-8 * (N + 1) < 1e-4 worst case, ~1e-6 typical: atol 1e-5.
  std::vector<double> expected = testing::to_double(d0);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t r = ids[static_cast<size_t>(n)] - row_begin;
    if (r < 0 || r >= rows) continue;
    for (int64_t c = 0; c < C; ++c) expected[static_cast<size_t>(r * C + c)] += dout[static_cast<size_t>(n * C + c)];
  }
  testing::expect_close(dtable, expected, 1e-6, 1e-5, "dtable");
}

TEST(Embedding, BackwardIsBitwiseIdenticalForOneAndTwoThreads) {
  // Many tokens hitting few rows: the worst case for order-dependent accumulation.
  const int64_t N = 2000, C = 37, rows = 7;
  const auto dout = random_floats(N * C, 6);
  const auto ids = random_ids(N, 0, static_cast<int32_t>(rows - 1), 7);
  const int before = omp_get_max_threads();
  std::vector<float> one(static_cast<size_t>(rows * C), 0.5f), two = one, three = one;
  omp_set_num_threads(1);
  embedding_backward(one.data(), dout.data(), ids.data(), N, C, 0, rows);
  omp_set_num_threads(2);
  embedding_backward(two.data(), dout.data(), ids.data(), N, C, 0, rows);
  omp_set_num_threads(3);
  embedding_backward(three.data(), dout.data(), ids.data(), N, C, 0, rows);
  omp_set_num_threads(before);
  EXPECT_EQ(one, two);
  EXPECT_EQ(one, three);
}

TEST(PositionEmbedding, ForwardAddsAndBackwardSumsOverBatch) {
  const int64_t B = 3, T = 5, C = 11;
  const auto wpe = random_floats(T * C, 8);
  const auto x0 = random_floats(B * T * C, 9);
  auto out = x0;
  position_embedding_forward(out.data(), wpe.data(), B, T, C);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c) {
        const size_t i = static_cast<size_t>((b * T + t) * C + c);
        EXPECT_EQ(out[i], x0[i] + wpe[static_cast<size_t>(t * C + c)]);
      }
  const auto dout = random_floats(B * T * C, 10);
  const auto d0 = random_floats(T * C, 11);
  auto dwpe = d0;
  position_embedding_backward(dwpe.data(), dout.data(), B, T, C);
  std::vector<double> expected = testing::to_double(d0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < T * C; ++i) expected[static_cast<size_t>(i)] += dout[static_cast<size_t>(b * T * C + i)];
  // B + 1 terms in [-1, 1]: fp32 error < 4 * 6e-8 * 4; atol 1e-6.
  testing::expect_close(dwpe, expected, 0.0, 1e-6, "dwpe");
}

TEST(Residual, AddsAndAllowsAliasing) {
  const int64_t n = 1001;
  const auto a = random_floats(n, 12);
  const auto b = random_floats(n, 13);
  std::vector<float> out(static_cast<size_t>(n));
  residual_forward(out.data(), a.data(), b.data(), n);
  for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i], a[i] + b[i]);
  auto inplace = a;
  residual_forward(inplace.data(), inplace.data(), b.data(), n);
  EXPECT_EQ(inplace, out);
}

}  // namespace
}  // namespace trident::kernels
