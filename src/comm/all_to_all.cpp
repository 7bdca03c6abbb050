// The Communicator's all_to_all and all_to_all_v (see communicator.h), and the per-rank count
// layout the *_v calls take, which the bf16 sums use too.
#include <numeric>

#include "comm/communicator_detail.h"

namespace trident::comm {

using namespace detail;

IntLayout detail::int_layout(std::span<const int64_t> counts, const char* what) {
  IntLayout l;
  int64_t at = 0;
  for (int64_t c : counts) {
    l.counts.push_back(to_int_count(c, what));
    l.displs.push_back(to_int_count(at, what));
    at += c;
  }
  to_int_count(at, what);
  return l;
}

namespace {

// Debug mode: rank s's send count to r must be r's receive count from s. Every rank learns the
// first mismatch of the group (the lowest receiving rank's), so all throw the same error.
void check_exchange_counts(detail::Group& g, const std::vector<int64_t>& send, const std::vector<int64_t>& recv) {
  std::vector<int64_t> told(static_cast<std::size_t>(g.size));
  g.backend->all_to_all(send.data(), 1, told.data(), DType::kI64);
  // {receiver, sender, sent, expected}, or {size, ...} when this rank agrees with everyone.
  int64_t mine[4] = {g.size, 0, 0, 0};
  for (int s = 0; s < g.size; ++s) {
    if (told[s] != recv[s]) {
      mine[0] = g.rank, mine[1] = s, mine[2] = told[s], mine[3] = recv[s];
      break;
    }
  }
  std::vector<int64_t> all(static_cast<std::size_t>(4 * g.size));
  g.backend->all_gather(mine, 4, all.data(), false, DType::kI64);
  for (int r = 0; r < g.size; ++r) {
    const int64_t* m = all.data() + 4 * r;
    if (m[0] == g.size) continue;
    throw Error(fmt::format(
        "all_to_all_v on group {}: {} sends {} elements to {} but that rank expects {} from it. "
        "Exchange the counts first (all_to_all of one count per rank) and pass each rank's "
        "received counts as its recv_counts",
        g.name, g.who(static_cast<int>(m[1])), m[2], g.who(static_cast<int>(m[0])), m[3]));
  }
}


}  // namespace

Work Communicator::all_to_all_raw(const void* in, int64_t in_count, std::span<const int64_t> send_counts,
                                  void* out, int64_t out_count, std::span<const int64_t> recv_counts,
                                  DType dtype) {
  const detail::Group& g0 = *group_;
  Signature sig{OpKind::kAllToAll, dtype, ReduceOp::kSum, -1, in_count, 0, 0};
  if (send_counts.empty() && recv_counts.empty()) {
    TRI_CHECK(in_count == out_count && in_count % g0.size == 0,
              "all_to_all on group {}: input has {} and output {} elements; both must be size ({}) x "
              "the chunk; for variable chunks use all_to_all_v",
              g0.name, in_count, out_count, g0.size);
    const int n = to_int_count(in_count / g0.size, "all_to_all");
    // Every chunk but this rank's own (which stays here).
    group_->bytes_sent += static_cast<uint64_t>((in_count - n) * static_cast<int64_t>(dtype_size(dtype)));
    return issue(group_, sig, [=](detail::Group& g) {
      g.backend->all_to_all(in, n, out, dtype);
    });
  }
  check_counts(g0, send_counts, "all_to_all_v send_counts");
  check_counts(g0, recv_counts, "all_to_all_v recv_counts");
  const int64_t sent = std::accumulate(send_counts.begin(), send_counts.end(), int64_t{0});
  const int64_t received = std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0});
  TRI_CHECK(in_count == sent && out_count == received,
            "all_to_all_v on group {}: input has {} elements (expected sum(send_counts) = {}), output "
            "{} (expected sum(recv_counts) = {})",
            g0.name, in_count, sent, out_count, received);
  // Totals differ between ranks: the signature compares the group size instead.
  sig.count = g0.size;
  group_->bytes_sent +=
      static_cast<uint64_t>((sent - send_counts[static_cast<std::size_t>(g0.rank)]) * static_cast<int64_t>(dtype_size(dtype)));
  const IntLayout s = int_layout(send_counts, "all_to_all_v"), r = int_layout(recv_counts, "all_to_all_v");
  std::vector<int64_t> send(send_counts.begin(), send_counts.end()), recv(recv_counts.begin(), recv_counts.end());
  const bool debug = g0.options.debug;
  return issue(group_, sig, [=](detail::Group& g) {
    if (debug) check_exchange_counts(g, send, recv);
    g.backend->all_to_all_v(in, s, out, r, dtype);
  });
}

}  // namespace trident::comm
