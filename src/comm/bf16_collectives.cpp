// The Communicator's bf16 gradient sums (allreduce_bf16, reduce_scatter_bf16_v; see
// communicator.h): MPI has no bf16 sum, so bf16 values are exchanged to their owners, added in
// fp32 in rank order (comm/bf16_sum.h) and rounded once.
#include <numeric>

#include "comm/bf16_sum.h"
#include "comm/communicator_detail.h"

namespace trident::comm {

using namespace detail;

namespace {

// The bf16 sum's exchange (see allreduce_bf16 in the header), on the worker thread: `wire` holds
// this rank's bf16 values laid out by `counts`; returns this rank's chunk of the bf16 sum.
std::vector<kernels::bf16_t> exchange_bf16_sum(detail::Group& g, const std::vector<kernels::bf16_t>& wire,
                                               const std::vector<int64_t>& counts, const char* what) {
  const IntLayout send = int_layout(counts, what);
  const int mine = send.counts[static_cast<std::size_t>(g.rank)];
  std::vector<int> rcounts(static_cast<std::size_t>(g.size), mine), rdispls(static_cast<std::size_t>(g.size));
  for (int s = 0; s < g.size; ++s) rdispls[static_cast<std::size_t>(s)] = to_int_count(int64_t{s} * mine, what);
  std::vector<kernels::bf16_t> got(static_cast<std::size_t>(g.size) * static_cast<std::size_t>(mine));
  g.backend->all_to_all_v(wire.data(), send, got.data(), IntLayout{rcounts, rdispls}, DType::kBF16);
  std::vector<kernels::bf16_t> sum(static_cast<std::size_t>(mine));
  sum_bf16_chunks(got.data(), g.size, mine, sum.data());
  return sum;
}

}  // namespace

Work Communicator::allreduce_bf16(std::span<float> buf) {
  const int64_t count = static_cast<int64_t>(buf.size());
  to_int_count(count, "allreduce_bf16");
  Signature sig{OpKind::kAllreduce, DType::kBF16, ReduceOp::kSum, -1, count, 0, 0};
  {
    // What the all_to_all_v and the all_gather_v send: every chunk but this rank's, then this
    // rank's chunk to each other rank.
    const int64_t mine = chunk_counts(count, size())[static_cast<std::size_t>(rank())];
    group_->bytes_sent += static_cast<uint64_t>(2 * ((count - mine) + mine * (size() - 1)));
  }
  float* data = buf.data();
  return issue(group_, sig, [=](detail::Group& g) {
    const std::vector<int64_t> counts = chunk_counts(count, g.size);
    std::vector<kernels::bf16_t> wire(static_cast<std::size_t>(count));
    round_to_bf16(data, count, wire.data());
    const std::vector<kernels::bf16_t> sum = exchange_bf16_sum(g, wire, counts, "allreduce_bf16");
    const IntLayout l = int_layout(counts, "allreduce_bf16");
    g.backend->all_gather_v(sum.data(), static_cast<int>(sum.size()), wire.data(), l, false, DType::kBF16);
    widen_from_bf16(wire.data(), count, data);
  });
}

Work Communicator::reduce_scatter_bf16_v(std::span<const float> in, std::span<float> out,
                                         std::span<const int64_t> counts_in) {
  const detail::Group& g0 = *group_;
  check_counts(g0, counts_in, "reduce_scatter_bf16_v");
  const int64_t total = std::accumulate(counts_in.begin(), counts_in.end(), int64_t{0});
  TRI_CHECK(static_cast<int64_t>(in.size()) == total && static_cast<int64_t>(out.size()) == counts_in[g0.rank],
            "reduce_scatter_bf16_v on group {}: input has {} elements (expected sum(counts) = {}), "
            "output {} (expected counts[{}] = {})",
            g0.name, in.size(), total, out.size(), g0.rank, counts_in[g0.rank]);
  to_int_count(total, "reduce_scatter_bf16_v");
  Signature sig{OpKind::kReduceScatter, DType::kBF16, ReduceOp::kSum, -1, total, 0, 0};
  group_->bytes_sent += static_cast<uint64_t>(2 * (total - counts_in[g0.rank]));
  sig.counts_hash = fnv1a(counts_in.data(), counts_in.size_bytes()) | 1;
  std::vector<int64_t> counts(counts_in.begin(), counts_in.end());
  const float* src = in.data();
  float* dst = out.data();
  return issue(group_, sig, [=](detail::Group& g) {
    std::vector<kernels::bf16_t> wire(static_cast<std::size_t>(total));
    round_to_bf16(src, total, wire.data());
    const std::vector<kernels::bf16_t> sum = exchange_bf16_sum(g, wire, counts, "reduce_scatter_bf16_v");
    widen_from_bf16(sum.data(), static_cast<int64_t>(sum.size()), dst);
  });
}

}  // namespace trident::comm
