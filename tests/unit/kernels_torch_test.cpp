// Cross-checks against PyTorch (CPU, fp32): attention forward/backward, fused cross-entropy,
// and 10 AdamW steps against torch.optim.AdamW bit for bit. Inputs are written to a temp
// directory, /usr/bin/python3 computes the references, results are read back. Skipped when
// python3 with torch is not available.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "kernels/kernels.h"
#include "kernels_testing.h"

namespace trident::kernels {
namespace {
namespace fs = std::filesystem;
using testing::random_floats;

constexpr int64_t B = 2, T = 67, C = 12, NH = 3;      // attention (T crosses a 64-row block)
constexpr int64_t N = 9, V = 1001, Vp = 1008;         // cross-entropy, padded vocabulary
constexpr int64_t P = 1037;                           // AdamW elements
constexpr int kSteps = 10;

const char* kScript = R"PY(
import sys, torch, torch.nn.functional as F
d = sys.argv[1]
def load(name, *shape, dtype=torch.float32):
    return torch.frombuffer(bytearray(open(f"{d}/{name}", "rb").read()), dtype=dtype).reshape(*shape).clone()
def save_raw(name, t):
    open(f"{d}/{name}", "wb").write(bytes(t.detach().contiguous().view(torch.uint8).reshape(-1).tolist()))
B, T, C, NH, N, V, Vp, P, S = [int(x) for x in sys.argv[2:11]]
HS = C // NH
qkv = load("qkv", B, T, 3 * C).requires_grad_(True)
q, k, v = qkv.split(C, dim=2)
q, k, v = [x.view(B, T, NH, HS).transpose(1, 2) for x in (q, k, v)]
att = (q @ k.transpose(-2, -1)) * (1.0 / HS ** 0.5)
att = att.masked_fill(torch.ones(T, T).tril() == 0, float("-inf")).softmax(dim=-1)
y = (att @ v).transpose(1, 2).reshape(B, T, C)
y.backward(load("dout", B, T, C))
save_raw("y.ref", y); save_raw("att.ref", att); save_raw("dqkv.ref", qkv.grad)
logits = load("logits", N, Vp)
targets = load("targets", N, dtype=torch.int32).long()
x = logits[:, :V].clone().requires_grad_(True)
losses = F.cross_entropy(x, targets, ignore_index=-1, reduction="none")
(losses.sum() * 0.125).backward()
save_raw("losses.ref", losses); save_raw("dlogits.ref", x.grad)
p = torch.nn.Parameter(load("p0", P))
opt = torch.optim.AdamW([p], lr=6e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
grads = load("grads", S, P)
for s in range(S):
    p.grad = grads[s].clone()
    opt.step()
save_raw("p.ref", p.data)
)PY";

std::vector<float> read_floats(const fs::path& path, size_t count) {
  std::vector<float> v(count);
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(count * sizeof(float)));
  EXPECT_TRUE(in.good()) << "could not read " << count << " floats from " << path;
  return v;
}

template <class T>
void write(const fs::path& path, const std::vector<T>& v) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
}

class TorchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) return;
    dir_ = fs::temp_directory_path() / ("trident_kernels_torch_" + std::to_string(getpid()));
    fs::create_directories(dir_);
    qkv_ = random_floats(B * T * 3 * C, 1, -2.0f, 2.0f);
    dout_ = random_floats(B * T * C, 2);
    logits_ = random_floats(N * Vp, 3, -5.0f, 5.0f);
    targets_.resize(N);
    for (int64_t n = 0; n < N; ++n) targets_[n] = static_cast<int32_t>((n * 131 + 7) % V);
    targets_[2] = -1;
    p0_ = random_floats(P, 4);
    grads_ = random_floats(kSteps * P, 5, -0.1f, 0.1f);
    write(dir_ / "qkv", qkv_);
    write(dir_ / "dout", dout_);
    write(dir_ / "logits", logits_);
    write(dir_ / "targets", targets_);
    write(dir_ / "p0", p0_);
    write(dir_ / "grads", grads_);
    { std::ofstream(dir_ / "ref.py") << kScript; }
    const std::string cmd = "OMP_NUM_THREADS=1 /usr/bin/python3 " + (dir_ / "ref.py").string() + " " +
                            dir_.string() + " " + std::to_string(B) + " " + std::to_string(T) + " " +
                            std::to_string(C) + " " + std::to_string(NH) + " " + std::to_string(N) +
                            " " + std::to_string(V) + " " + std::to_string(Vp) + " " +
                            std::to_string(P) + " " + std::to_string(kSteps);
    ran_ = std::system(cmd.c_str()) == 0;
  }
  static void TearDownTestSuite() {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  void SetUp() override {
    if (dir_.empty()) GTEST_SKIP() << "/usr/bin/python3 with torch is not available";
    ASSERT_TRUE(ran_) << "the PyTorch reference script failed";
  }

  static inline fs::path dir_;
  static inline bool ran_ = false;
  static inline std::vector<float> qkv_, dout_, logits_, p0_, grads_;
  static inline std::vector<int32_t> targets_;
};

std::vector<double> as_double(const std::vector<float>& v) { return testing::to_double(v); }

TEST_F(TorchTest, Attention) {
  std::vector<float> y(static_cast<size_t>(B * T * C)), att(static_cast<size_t>(B * NH * T * T)), dqkv(qkv_.size());
  attention_forward(y.data(), att.data(), qkv_.data(), B, T, C, NH);
  attention_backward(dqkv.data(), dout_.data(), qkv_.data(), att.data(), B, T, C, NH);
  // Both sides are fp32 with different summation orders and exp implementations:
  // ~1e-6 relative per value, sums over <= T terms: 2e-5.
  testing::expect_close(y, as_double(read_floats(dir_ / "y.ref", y.size())), 2e-5, 2e-5, "y");
  testing::expect_close(att, as_double(read_floats(dir_ / "att.ref", att.size())), 2e-5, 1e-6, "att");
  testing::expect_close(dqkv, as_double(read_floats(dir_ / "dqkv.ref", dqkv.size())), 1e-4, 5e-5, "dqkv");
}

TEST_F(TorchTest, CrossEntropy) {
  std::vector<float> losses(static_cast<size_t>(N));
  auto grad = logits_;
  crossentropy_softmax_forward_backward(losses.data(), grad.data(), targets_.data(), N, V, Vp, 0.125f);
  // Losses are O(log V) ~ 7 from fp32 sums over V terms on both sides: rtol 2e-6.
  testing::expect_close(losses, as_double(read_floats(dir_ / "losses.ref", losses.size())), 2e-6, 2e-6, "losses");
  const auto ref = read_floats(dir_ / "dlogits.ref", static_cast<size_t>(N * V));
  std::vector<float> real;
  std::vector<double> expected;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < V; ++i) {
      real.push_back(grad[static_cast<size_t>(n * Vp + i)]);
      expected.push_back(ref[static_cast<size_t>(n * V + i)]);
    }
  // Softmax probabilities (<= 1) times 0.125, ~1e-6 relative: atol 1e-8, rtol 1e-5.
  testing::expect_close(real, expected, 1e-5, 1e-8, "dlogits");
}

TEST_F(TorchTest, AdamWMatchesTorchBitForBit) {
  auto p = p0_;
  std::vector<float> m(static_cast<size_t>(P), 0.0f), v(static_cast<size_t>(P), 0.0f);
  for (int s = 0; s < kSteps; ++s)
    adamw_update(p.data(), grads_.data() + s * P, m.data(), v.data(), P, 6e-4f, 0.9f, 0.95f, 1e-8f,
                 0.1f, s + 1, 1.0f);
  const auto ref = read_floats(dir_ / "p.ref", p.size());
  int64_t mismatches = 0;
  for (size_t i = 0; i < p.size(); ++i) mismatches += p[i] != ref[i];
  EXPECT_EQ(mismatches, 0) << "elements differing from torch.optim.AdamW after " << kSteps << " steps";
  testing::expect_close(p, as_double(ref), 1e-6, 1e-7, "param");
}

}  // namespace
}  // namespace trident::kernels
