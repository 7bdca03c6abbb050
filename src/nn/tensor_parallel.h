// What the model needs from tensor parallelism: this rank's place in the tp group and the
// collectives Megatron's conjugate functions use. With size 1 no communication happens, so
// the single-process model is the tp=1 case of the same code.
//
// Sequence parallelism (Korthikanti et al. 2022, `sequence_parallel`): the residual stream,
// LayerNorms and the row-parallel bias adds run on this rank's share of the N = B*T tokens
// (rows split as comm::chunk_counts does: the first N % tp ranks get one extra row). Before a
// column-parallel layer the rows are all-gathered (backward: reduce-scattered); after a
// row-parallel layer the partial sums are reduce-scattered (backward: all-gathered).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "nn/expert_parallel.h"

namespace trident::nn {

// Implemented over comm/ by the parallel layer (parallel/tensor_parallel_comm.h); nn/ only
// sees this interface. Every call is collective over the tp group and blocking.
class TensorParallelComm {
 public:
  virtual ~TensorParallelComm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual void allreduce_sum(float* data, int64_t count) = 0;
  virtual void allreduce_max(float* data, int64_t count) = 0;
  // in holds sum(counts) elements, rank r's chunk at offset sum(counts[0..r)); out receives
  // counts[rank] elements: the sum over ranks of this rank's chunk. in and out do not overlap.
  virtual void reduce_scatter_sum(const float* in, float* out, std::span<const int64_t> counts) = 0;
  // in holds counts[rank] elements; out (sum(counts)) receives every rank's chunk in order.
  virtual void all_gather(const float* in, float* out, std::span<const int64_t> counts) = 0;
  // The same for 16-bit words (bf16 or fp16 bits: only moved, never summed), half the bytes.
  virtual void all_gather16(const uint16_t* in, uint16_t* out, std::span<const int64_t> counts) = 0;
};

// Rows [begin, begin + count) of N this rank holds under sequence parallelism.
struct RowSplit {
  int64_t begin = 0;
  int64_t count = 0;
  std::vector<int64_t> counts;  // every rank's row count
};

struct TpContext {
  int rank = 0;
  int size = 1;
  TensorParallelComm* comm = nullptr;  // required when size > 1
  bool sequence_parallel = false;      // ignored when size == 1
  // Expert parallelism rides along: every layer is built with this context, and only the
  // mixture-of-experts MLP reads it (nn/moe_mlp.h). Independent of the tp fields above.
  EpContext ep;

  bool sp() const { return sequence_parallel && size > 1; }

  // Megatron's g: sum partial results across the group (forward of row-parallel layers,
  // backward of column-parallel ones). Identity when size == 1.
  void allreduce_sum(float* data, int64_t count) const {
    if (size > 1) comm->allreduce_sum(data, count);
  }
  void allreduce_max(float* data, int64_t count) const {
    if (size > 1) comm->allreduce_max(data, count);
  }

  // The split of N token rows over the group (this rank's rows first, then all counts).
  RowSplit rows(int64_t N) const {
    RowSplit s;
    for (int r = 0; r < size; ++r) {
      const int64_t c = N / size + (r < N % size ? 1 : 0);
      if (r < rank) s.begin += c;
      if (r == rank) s.count = c;
      s.counts.push_back(c);
    }
    return s;
  }
  // Rows this rank holds of N under sequence parallelism (N itself without it).
  int64_t local_rows(int64_t N) const { return sp() ? rows(N).count : N; }
  // Sequence-parallel all-gather of (local rows, width) into (N, width).
  void gather_rows(const float* local, float* full, int64_t N, int64_t width) const {
    std::vector<int64_t> counts = rows(N).counts;
    for (int64_t& c : counts) c *= width;
    comm->all_gather(local, full, counts);
  }
  // The same for rows of 16-bit words: the matmul operands saved in 16 bits (nn/saved_operand.h),
  // which the column-parallel matmul after the gather would round to those bits anyway.
  void gather_rows16(const uint16_t* local, uint16_t* full, int64_t N, int64_t width) const {
    std::vector<int64_t> counts = rows(N).counts;
    for (int64_t& c : counts) c *= width;
    comm->all_gather16(local, full, counts);
  }
  // Sequence-parallel reduce-scatter of partial (N, width) into this rank's summed rows.
  void reduce_scatter_rows(const float* full, float* local, int64_t N, int64_t width) const {
    std::vector<int64_t> counts = rows(N).counts;
    for (int64_t& c : counts) c *= width;
    comm->reduce_scatter_sum(full, local, counts);
  }
};

// Called by the model around each parameter group's use, so data parallelism can launch a
// bucket's allreduce as soon as its gradients are final (DDP) and ZeRO-3 can gather a layer's
// parameters just in time. Default: nothing.
class ModelHooks {
 public:
  virtual ~ModelHooks() = default;
  virtual void before_group_forward(int /*group*/) {}
  virtual void before_group_backward(int /*group*/) {}
  virtual void after_group_backward(int /*group*/) {}
};

}  // namespace trident::nn
