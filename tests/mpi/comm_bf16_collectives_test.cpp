// Communicator::allreduce_bf16 and reduce_scatter_bf16_v on several world sizes: each element
// is round_bf16(sum over ranks, in rank order, of round_bf16(x_r)) added in fp32 -- computed
// here from every rank's values -- bit for bit, the same on every rank, whatever the buffer
// size or how a buffer is split into calls; both refuse what they cannot do.
// ranks: 1 2 3 4
#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <vector>

#include "comm/bf16_sum.h"
#include "comm/communicator.h"
#include "comm/mpi_backend.h"
#include "core/check.h"
#include "core/rng.h"
#include "mpi_gtest_main.h"

namespace trident::comm {
namespace {

std::unique_ptr<Communicator> make_world() {
  return make_mpi_communicator(MPI_COMM_WORLD, "world", test::aborting_after(30.0));
}

// Rank r's value i: fp32 values of mixed sign and magnitude, most not representable in bf16,
// so both roundings act.
float value(int rank, int64_t i) {
  const uint32_t h = static_cast<uint32_t>((i + 1) * 2654435761u) ^ static_cast<uint32_t>((rank + 1) * 40503u);
  const float m = static_cast<float>(h % 100003u) / 100003.0f - 0.37f;
  return m * static_cast<float>(1 + (h >> 20) % 5) * (rank % 2 ? 1.0f : 0.001f * static_cast<float>(rank + 1));
}

// The definition, from every rank's values.
float expected(int n, int64_t i) {
  float acc = 0.0f;
  for (int r = 0; r < n; ++r) acc += kernels::bf16_to_float(kernels::float_to_bf16(value(r, i)));
  return kernels::bf16_to_float(kernels::float_to_bf16(acc));
}

TEST(Bf16Sum, AllreduceIsTheRankOrderedSumOfRoundedValues) {
  auto w = make_world();
  const int n = w->size(), r = w->rank();
  for (int64_t count : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{3 * n + 1}, int64_t{(1 << 18) + 3}}) {
    std::vector<float> buf(static_cast<std::size_t>(count));
    for (int64_t i = 0; i < count; ++i) buf[static_cast<std::size_t>(i)] = value(r, i);
    w->allreduce_bf16(std::span(buf)).wait();
    int64_t wrong = 0;
    for (int64_t i = 0; i < count; ++i) wrong += buf[static_cast<std::size_t>(i)] != expected(n, i);
    EXPECT_EQ(wrong, 0) << "count " << count;
  }
}

TEST(Bf16Sum, SplittingTheBufferChangesNoBit) {
  // As DDP buckets do: the same elements reduced in one call or in pieces of other sizes.
  auto w = make_world();
  const int r = w->rank();
  const int64_t count = 10007;
  std::vector<float> whole(static_cast<std::size_t>(count)), pieces(whole.size());
  for (int64_t i = 0; i < count; ++i) whole[static_cast<std::size_t>(i)] = pieces[static_cast<std::size_t>(i)] = value(r, i);
  w->allreduce_bf16(std::span(whole)).wait();
  std::vector<Work> works;
  for (int64_t at = 0, len = 1; at < count; at += len, len = len * 3 + 1) {
    const int64_t m = std::min(len, count - at);
    works.push_back(w->allreduce_bf16(std::span(pieces.data() + at, static_cast<std::size_t>(m))));
  }
  for (Work& x : works) x.wait();
  EXPECT_EQ(whole, pieces);
}

TEST(Bf16Sum, EveryRankHoldsTheSameBits) {
  auto w = make_world();
  const int64_t count = 4099;
  std::vector<float> buf(static_cast<std::size_t>(count));
  for (int64_t i = 0; i < count; ++i) buf[static_cast<std::size_t>(i)] = value(w->rank(), i);
  w->allreduce_bf16(std::span(buf)).wait();
  std::vector<float> root = buf;
  w->broadcast(std::span(root), 0).wait();
  EXPECT_EQ(buf, root);
}

TEST(Bf16Sum, ReduceScatterGivesEachRankItsChunkOfTheSameSum) {
  auto w = make_world();
  const int n = w->size(), r = w->rank();
  // Uneven chunks, one of them empty when there are several ranks.
  std::vector<int64_t> counts(static_cast<std::size_t>(n));
  for (int s = 0; s < n; ++s) counts[static_cast<std::size_t>(s)] = s == 1 ? 0 : 5 * s + 3;
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  std::vector<float> in(static_cast<std::size_t>(total));
  for (int64_t i = 0; i < total; ++i) in[static_cast<std::size_t>(i)] = value(r, i);
  std::vector<float> out(static_cast<std::size_t>(counts[static_cast<std::size_t>(r)]));
  w->reduce_scatter_bf16_v(std::span<const float>(in), std::span(out), std::span<const int64_t>(counts)).wait();
  const int64_t at = std::accumulate(counts.begin(), counts.begin() + r, int64_t{0});
  for (std::size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i], expected(n, at + static_cast<int64_t>(i))) << i;
}

TEST(Bf16Sum, RefusesWhatItCannotDo) {
  auto w = make_world();
  std::vector<uint16_t> raw(4);
  EXPECT_THROW(w->allreduce_raw(raw.data(), 4, DType::kBF16, ReduceOp::kSum), Error);
  std::vector<float> in(3), out(1);
  const std::vector<int64_t> bad(static_cast<std::size_t>(w->size()), 2);  // sums to 2N, not 3
  EXPECT_THROW(w->reduce_scatter_bf16_v(std::span<const float>(in), std::span(out), std::span<const int64_t>(bad)), Error);
}

}  // namespace
}  // namespace trident::comm

int main(int argc, char** argv) { return trident::test::run_tests_on_every_rank(argc, argv); }
