// The Communicator's reductions and gathers: allreduce, reduce-scatter, all-gather, broadcast
// and barrier, each one blocking backend call on the group's worker thread (see communicator.h).
#include <numeric>

#include "comm/communicator_detail.h"

namespace trident::comm {

using namespace detail;

namespace {

void scale(void* buf, int64_t n, DType d, int size) {
  if (d == DType::kF32) {
    float* p = static_cast<float*>(buf);
    const float inv = 1.0f / static_cast<float>(size);
    for (int64_t i = 0; i < n; ++i) p[i] *= inv;
  } else if (d == DType::kF64) {
    double* p = static_cast<double*>(buf);
    const double inv = 1.0 / size;
    for (int64_t i = 0; i < n; ++i) p[i] *= inv;
  }
}

}  // namespace

Work Communicator::allreduce_raw(void* buf, int64_t count, DType dtype, ReduceOp op) {
  TRI_CHECK(dtype != DType::kBF16, "allreduce on group {}: MPI has no bf16 sum; use "
            "allreduce_bf16 on the fp32 values", name());
  TRI_CHECK(op != ReduceOp::kAvg || is_floating(dtype),
            "allreduce on group {}: op avg needs a floating dtype, got {}", name(), to_string(dtype));
  const int n = to_int_count(count, "allreduce");
  Signature sig{OpKind::kAllreduce, dtype, op, -1, count, 0, 0};
  group_->bytes_sent += ring_bytes(count * static_cast<int64_t>(dtype_size(dtype)), size(), 2);
  return issue(group_, sig, [=](detail::Group& g) {
    g.backend->allreduce(buf, n, dtype, op == ReduceOp::kAvg ? ReduceOp::kSum : op);
    if (op == ReduceOp::kAvg) scale(buf, count, dtype, g.size);
  });
}

Work Communicator::reduce_scatter_raw(const void* in, int64_t in_count, void* out,
                                      int64_t out_count, std::span<const int64_t> counts,
                                      DType dtype, ReduceOp op) {
  const detail::Group& g0 = *group_;
  TRI_CHECK(op != ReduceOp::kAvg || is_floating(dtype),
            "reduce_scatter on group {}: op avg needs a floating dtype", g0.name);
  TRI_CHECK(dtype != DType::kBF16, "reduce_scatter on group {}: MPI has no bf16 sum; use "
            "reduce_scatter_bf16_v on the fp32 values", g0.name);
  Signature sig{OpKind::kReduceScatter, dtype, op, -1, in_count, 0, 0};
  group_->bytes_sent += ring_bytes(in_count * static_cast<int64_t>(dtype_size(dtype)), g0.size, 1);
  if (counts.empty()) {
    TRI_CHECK(in_count == out_count * g0.size,
              "reduce_scatter on group {}: input has {} elements, expected size ({}) x output "
              "({}) = {}; for sizes not divisible by the group use reduce_scatter_v",
              g0.name, in_count, g0.size, out_count, out_count * g0.size);
    const int n = to_int_count(out_count, "reduce_scatter");
    return issue(group_, sig, [=](detail::Group& g) {
      g.backend->reduce_scatter_block(in, out, n, dtype, op == ReduceOp::kAvg ? ReduceOp::kSum : op);
      if (op == ReduceOp::kAvg) scale(out, out_count, dtype, g.size);
    });
  }
  check_counts(g0, counts, "reduce_scatter_v");
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  TRI_CHECK(in_count == total && out_count == counts[g0.rank],
            "reduce_scatter_v on group {}: input has {} elements (expected sum(counts) = {}), "
            "output {} (expected counts[{}] = {})",
            g0.name, in_count, total, out_count, g0.rank, counts[g0.rank]);
  to_int_count(total, "reduce_scatter_v");
  std::vector<int> icounts(counts.begin(), counts.end());
  sig.counts_hash = fnv1a(counts.data(), counts.size_bytes()) | 1;
  return issue(group_, sig, [=](detail::Group& g) {
    g.backend->reduce_scatter(in, out, icounts, dtype, op == ReduceOp::kAvg ? ReduceOp::kSum : op);
    if (op == ReduceOp::kAvg) scale(out, out_count, dtype, g.size);
  });
}

Work Communicator::all_gather_raw(const void* in, int64_t in_count, void* out, int64_t out_count,
                                  std::span<const int64_t> counts, DType dtype) {
  const detail::Group& g0 = *group_;
  const size_t es = dtype_size(dtype);
  Signature sig{OpKind::kAllGather, dtype, ReduceOp::kSum, -1, out_count, 0, 0};
  group_->bytes_sent += static_cast<uint64_t>(in_count * static_cast<int64_t>(es) * (g0.size - 1));
  if (counts.empty()) {
    TRI_CHECK(out_count == in_count * g0.size,
              "all_gather on group {}: output has {} elements, expected size ({}) x input ({}) "
              "= {}; for sizes not divisible by the group use all_gather_v",
              g0.name, out_count, g0.size, in_count, in_count * g0.size);
    const int n = to_int_count(in_count, "all_gather");
    to_int_count(out_count, "all_gather");
    const bool in_place =
        n > 0 && in == static_cast<const char*>(out) + static_cast<size_t>(g0.rank) * n * es;
    return issue(group_, sig, [=](detail::Group& g) {
      g.backend->all_gather(in, n, out, in_place, dtype);
    });
  }
  check_counts(g0, counts, "all_gather_v");
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  TRI_CHECK(out_count == total && in_count == counts[g0.rank],
            "all_gather_v on group {}: output has {} elements (expected sum(counts) = {}), "
            "input {} (expected counts[{}] = {})",
            g0.name, out_count, total, in_count, g0.rank, counts[g0.rank]);
  to_int_count(total, "all_gather_v");
  const IntLayout layout = int_layout(counts, "all_gather_v");
  const bool in_place = in_count > 0 &&
      in == static_cast<const char*>(out) + static_cast<size_t>(layout.displs[g0.rank]) * es;
  sig.counts_hash = fnv1a(counts.data(), counts.size_bytes()) | 1;
  const int n = static_cast<int>(in_count);
  return issue(group_, sig, [=](detail::Group& g) {
    g.backend->all_gather_v(in, n, out, layout, in_place, dtype);
  });
}

Work Communicator::broadcast_raw(void* buf, int64_t count, DType dtype, int root) {
  TRI_CHECK(root >= 0 && root < size(), "broadcast on group {}: root {} is not a rank of a "
            "group of size {}", name(), root, size());
  const int n = to_int_count(count, "broadcast");
  Signature sig{OpKind::kBroadcast, dtype, ReduceOp::kSum, root, count, 0, 0};
  return issue(group_, sig, [=](detail::Group& g) {
    g.backend->broadcast(buf, n, dtype, root);
  });
}

Work Communicator::barrier() {
  Signature sig{OpKind::kBarrier, DType::kU8, ReduceOp::kSum, -1, 0, 0, 0};
  return issue(group_, sig, [](detail::Group& g) {
    g.backend->barrier();
  });
}

}  // namespace trident::comm
