// What the model needs from tensor parallelism: this rank's place in the tp group and the
// collectives Megatron's conjugate functions use. With size 1 no communication happens, so
// the single-process model is the tp=1 case of the same code.
#pragma once

#include <cstdint>

namespace trident::nn {

// Implemented over comm/ by the parallel layer; nn/ only sees this interface.
class TensorParallelComm {
 public:
  virtual ~TensorParallelComm() = default;
  virtual void allreduce_sum(float* data, int64_t count) = 0;
  virtual void allreduce_max(float* data, int64_t count) = 0;
};

struct TpContext {
  int rank = 0;
  int size = 1;
  TensorParallelComm* comm = nullptr;  // required when size > 1

  // Megatron's g: sum partial results across the group (forward of row-parallel layers,
  // backward of column-parallel ones). Identity when size == 1.
  void allreduce_sum(float* data, int64_t count) const {
    if (size > 1) comm->allreduce_sum(data, count);
  }
  void allreduce_max(float* data, int64_t count) const {
    if (size > 1) comm->allreduce_max(data, count);
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
