// nn::TensorParallelComm over a comm::Communicator (the mesh's tp group): the collectives the
// tensor-parallel model issues, as blocking calls. Also the start-up validation of a tp size
// against the model shape and the world. What the engine must do for tp: see nn/model.h.
#pragma once

#include <memory>

#include "comm/communicator.h"
#include "nn/model_config.h"
#include "nn/tensor_parallel.h"

namespace trident::parallel {

class CommTensorParallel final : public nn::TensorParallelComm {
 public:
  explicit CommTensorParallel(comm::Communicator& group) : group_(group) {}
  int rank() const override { return group_.rank(); }
  int size() const override { return group_.size(); }
  void allreduce_sum(float* data, int64_t count) override;
  void allreduce_max(float* data, int64_t count) override;
  void reduce_scatter_sum(const float* in, float* out, std::span<const int64_t> counts) override;
  void all_gather(const float* in, float* out, std::span<const int64_t> counts) override;
  void all_gather16(const uint16_t* in, uint16_t* out, std::span<const int64_t> counts) override;

 private:
  comm::Communicator& group_;
};

// Throws trident::Error with what to change when `tp` cannot split this model on `world`
// ranks: tp < 1 or > world, world % tp != 0, n_head or the MLP width 4*n_embd not divisible.
void validate_tensor_parallel(const nn::ModelConfig& cfg, int tp, int world_size);

// The context to construct nn::Model with: rank and size from `group`, collectives via `comm`
// (which must outlive the model).
nn::TpContext make_tp_context(nn::TensorParallelComm& comm, bool sequence_parallel);

}  // namespace trident::parallel
