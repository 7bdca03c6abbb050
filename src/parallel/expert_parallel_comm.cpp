// The ep group's exchange over comm::Communicator (see expert_parallel_comm.h).
#include "parallel/expert_parallel_comm.h"

#include <numeric>

#include "core/check.h"

namespace trident::parallel {

void CommExpertParallel::all_to_all_v(const float* in, std::span<const int64_t> send_counts, float* out,
                                      std::span<const int64_t> recv_counts) {
  const auto sent = static_cast<std::size_t>(std::accumulate(send_counts.begin(), send_counts.end(), int64_t{0}));
  const auto received = static_cast<std::size_t>(std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0}));
  group_.all_to_all_v(std::span<const float>(in, sent), send_counts, std::span<float>(out, received), recv_counts).wait();
}

void CommExpertParallel::all_to_all_v16(const uint16_t* in, std::span<const int64_t> send_counts, uint16_t* out,
                                        std::span<const int64_t> recv_counts) {
  const int64_t sent = std::accumulate(send_counts.begin(), send_counts.end(), int64_t{0});
  const int64_t received = std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0});
  // 2-byte elements (the bf16 type moves fp16 bits just as well: MPI only copies them).
  group_.all_to_all_raw(in, sent, send_counts, out, received, recv_counts, comm::DType::kBF16).wait();
}

void CommExpertParallel::all_to_all_counts(const int64_t* in, int64_t* out, int64_t per_rank) {
  const auto n = static_cast<std::size_t>(per_rank * group_.size());
  group_.all_to_all(std::span<const int64_t>(in, n), std::span<int64_t>(out, n)).wait();
}

void validate_expert_parallel(const nn::ModelConfig& cfg, int ep) {
  if (ep == 1) return;
  TRI_CHECK(cfg.is_moe(), "--ep {} splits a mixture-of-experts model's experts over ranks, but this "
            "model has no experts (a dense {}); use --ep 1", ep, nn::family_name(cfg.family));
  TRI_CHECK(cfg.n_experts % ep == 0,
            "--ep {} does not divide the {} experts of each layer (num_local_experts): each ep rank "
            "holds num_local_experts / ep of them; choose an ep that divides {}",
            ep, cfg.n_experts, cfg.n_experts);
}

nn::EpContext make_ep_context(nn::ExpertParallelComm& comm) {
  nn::EpContext ctx;
  ctx.rank = comm.rank();
  ctx.size = comm.size();
  ctx.comm = ctx.size > 1 ? &comm : nullptr;
  return ctx;
}

}  // namespace trident::parallel
