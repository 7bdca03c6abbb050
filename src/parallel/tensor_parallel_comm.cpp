// TensorParallelComm over comm::Communicator, and tp validation.
#include "parallel/tensor_parallel_comm.h"

#include "nn/architecture.h"

#include <numeric>

#include "core/check.h"

namespace trident::parallel {

void CommTensorParallel::allreduce_sum(float* data, int64_t count) {
  group_.allreduce(std::span<float>(data, static_cast<std::size_t>(count)), comm::ReduceOp::kSum).wait();
}

void CommTensorParallel::allreduce_max(float* data, int64_t count) {
  group_.allreduce(std::span<float>(data, static_cast<std::size_t>(count)), comm::ReduceOp::kMax).wait();
}

void CommTensorParallel::reduce_scatter_sum(const float* in, float* out,
                                            std::span<const int64_t> counts) {
  TRI_CHECK(static_cast<int>(counts.size()) == group_.size(), "reduce_scatter: {} counts for {} ranks",
            counts.size(), group_.size());
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  const auto mine = static_cast<std::size_t>(counts[static_cast<std::size_t>(group_.rank())]);
  group_.reduce_scatter_v(std::span<const float>(in, static_cast<std::size_t>(total)),
                          std::span<float>(out, mine), counts, comm::ReduceOp::kSum).wait();
}

void CommTensorParallel::all_gather(const float* in, float* out, std::span<const int64_t> counts) {
  TRI_CHECK(static_cast<int>(counts.size()) == group_.size(), "all_gather: {} counts for {} ranks",
            counts.size(), group_.size());
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  const auto mine = static_cast<std::size_t>(counts[static_cast<std::size_t>(group_.rank())]);
  group_.all_gather_v(std::span<const float>(in, mine),
                      std::span<float>(out, static_cast<std::size_t>(total)), counts).wait();
}

void CommTensorParallel::all_gather16(const uint16_t* in, uint16_t* out, std::span<const int64_t> counts) {
  TRI_CHECK(static_cast<int>(counts.size()) == group_.size(), "all_gather16: {} counts for {} ranks",
            counts.size(), group_.size());
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  const int64_t mine = counts[static_cast<std::size_t>(group_.rank())];
  // 2-byte elements (the bf16 type moves fp16 bits just as well: MPI only copies them).
  group_.all_gather_raw(in, mine, out, total, counts, comm::DType::kBF16).wait();
}

void validate_tensor_parallel(const nn::ModelConfig& cfg, int tp, int world_size) {
  TRI_CHECK(tp >= 1, "tp must be at least 1, got {}", tp);
  TRI_CHECK(tp <= world_size,
            "tp ({}) is larger than the world size ({}): tensor parallelism splits each layer over "
            "tp ranks; launch at least {} ranks or use --tp <= {}",
            tp, world_size, tp, world_size);
  TRI_CHECK(world_size % tp == 0,
            "the world size ({}) is not a multiple of tp ({}); use a tp that divides {}", world_size,
            tp, world_size);
  nn::check_tensor_parallel_split(cfg, tp);
}

nn::TpContext make_tp_context(nn::TensorParallelComm& comm, bool sequence_parallel) {
  nn::TpContext ctx;
  ctx.rank = comm.rank();
  ctx.size = comm.size();
  ctx.comm = ctx.size > 1 ? &comm : nullptr;
  ctx.sequence_parallel = sequence_parallel;
  return ctx;
}

}  // namespace trident::parallel
