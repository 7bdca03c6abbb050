// Opt-in timing of kernel calls (for bench/gpt_vs_torch's per-phase profile). Off by default:
// each kernel then pays one pointer load and a not-taken branch; the clock is read only while
// a sink is installed. The sink is process-wide (a deliberate exception to "no globals": a
// profiler must see every call without threading a context through the model), and is meant
// to be set from the thread that runs the model, between steps.
#pragma once

#include <chrono>
#include <cstdint>

namespace trident::kernels {

enum class KernelOp : int {
  kMatmul,        // Conv1D-layout linear layer: dims (N, C, OC)
  kMatmulNt,      // the tied LM head against the [V, C] table: dims (N, C, V)
  kAttention,     // dims (B*T, C, NH)
  kLayerNorm,     // dims (N, C, 0)
  kGelu,          // dims (n, 0, 0)
  kResidual,      // dims (n, 0, 0)
  kEmbedding,     // token and position embeddings: dims (N, C, 0)
  kCrossEntropy,  // dims (N, V, Vp)
  kAdamW,         // dims (n, 0, 0)
  kSumSquares,    // the gradient norm: dims (n, 0, 0)
  kRmsNorm,       // dims (N, C, 0)
  kRope,          // rotary position embedding: dims (B*T, heads, HS)
  kSwiGlu,        // dims (n, 0, 0)
  kCount
};
const char* kernel_op_name(KernelOp op);

struct KernelCall {
  KernelOp op;
  bool backward;
  int64_t d0, d1, d2;  // shape, as documented per op above
  double seconds;
};

class ProfileSink {
 public:
  virtual ~ProfileSink() = default;
  virtual void record(const KernelCall& call) = 0;
};

// Installs (or, with nullptr, removes) the sink every kernel call reports to.
void set_profile_sink(ProfileSink* sink);

namespace detail {
extern ProfileSink* g_profile_sink;

// Times the enclosing kernel call when a sink is installed; does nothing otherwise.
class KernelTimer {
 public:
  KernelTimer(KernelOp op, bool backward, int64_t d0, int64_t d1 = 0, int64_t d2 = 0) {
    if (g_profile_sink != nullptr) [[unlikely]] {
      call_ = {op, backward, d0, d1, d2, 0.0};
      on_ = true;
      start_ = std::chrono::steady_clock::now();
    }
  }
  ~KernelTimer() {
    if (on_) [[unlikely]] {
      call_.seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      if (g_profile_sink != nullptr) g_profile_sink->record(call_);
    }
  }
  KernelTimer(const KernelTimer&) = delete;
  KernelTimer& operator=(const KernelTimer&) = delete;

 private:
  bool on_ = false;
  KernelCall call_{};
  std::chrono::steady_clock::time_point start_{};
};
}  // namespace detail

}  // namespace trident::kernels
