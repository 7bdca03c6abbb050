// What the mixture-of-experts layer needs from expert parallelism: this rank's place in the ep
// group (ranks that split one layer's experts between them and exchange token rows) and the
// exchange itself. Implemented over comm/ by parallel/expert_parallel_comm.h; nn/ only sees this
// interface. Size 1 (the default): every rank holds every expert, nothing is exchanged.
//
// Rank q of an ep group of size P holds experts [q E/P, (q+1) E/P) of every layer; which
// experts a rank holds is the only fact ep adds to the parameters (nn/param_decl.h's
// local_experts).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace trident::nn {

class ExpertParallelComm {
 public:
  virtual ~ExpertParallelComm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Collective and blocking over the ep group: rank r gets send_counts[r] elements of `in`
  // (chunks back to back in rank order) and this rank receives recv_counts[s] from rank s.
  virtual void all_to_all_v(const float* in, std::span<const int64_t> send_counts, float* out,
                            std::span<const int64_t> recv_counts) = 0;
  // The same for 16-bit words (bf16 or fp16 bits: only moved, never summed), half the bytes:
  // the expert inputs sent to their owners under --precision bf16|fp16 (nn/moe_mlp.h).
  virtual void all_to_all_v16(const uint16_t* in, std::span<const int64_t> send_counts, uint16_t* out,
                              std::span<const int64_t> recv_counts) = 0;
  // Equal chunks of `per_rank` counts: out[s * per_rank + i] = rank s's in[rank() * per_rank + i].
  virtual void all_to_all_counts(const int64_t* in, int64_t* out, int64_t per_rank) = 0;
};

struct EpContext {
  int rank = 0;
  int size = 1;
  ExpertParallelComm* comm = nullptr;  // required when size > 1

  // The experts [first, first + count) of E this rank holds.
  int first_expert(int n_experts) const { return rank * (n_experts / size); }
  int local_count(int n_experts) const { return n_experts / size; }
  int owner_of(int expert, int n_experts) const { return expert / (n_experts / size); }
  bool holds(int expert, int n_experts) const {
    return expert < 0 || owner_of(expert, n_experts) == rank;
  }
};

}  // namespace trident::nn
