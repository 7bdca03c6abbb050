// nn::ExpertParallelComm over a comm::Communicator (the mesh's ep group): the token exchange of
// the mixture-of-experts layer as blocking all_to_all calls, and the engine's start-up checks of
// an ep size against the model and the other parallel options.
#pragma once

#include "comm/communicator.h"
#include "nn/expert_parallel.h"
#include "nn/model_config.h"

namespace trident::parallel {

class CommExpertParallel final : public nn::ExpertParallelComm {
 public:
  explicit CommExpertParallel(comm::Communicator& group) : group_(group) {}
  int rank() const override { return group_.rank(); }
  int size() const override { return group_.size(); }
  void all_to_all_v(const float* in, std::span<const int64_t> send_counts, float* out,
                    std::span<const int64_t> recv_counts) override;
  void all_to_all_v16(const uint16_t* in, std::span<const int64_t> send_counts, uint16_t* out,
                      std::span<const int64_t> recv_counts) override;
  void all_to_all_counts(const int64_t* in, int64_t* out, int64_t per_rank) override;

 private:
  comm::Communicator& group_;
};

// Throws trident::Error naming the fix when expert parallelism `ep` cannot split this model:
// a dense model, or E % ep != 0. (Any ZeRO stage combines: parallel/zero.h shards experts over
// edp.)
void validate_expert_parallel(const nn::ModelConfig& cfg, int ep);

nn::EpContext make_ep_context(nn::ExpertParallelComm& comm);

}  // namespace trident::parallel
