// Whole-model gradient check by central finite differences: for every parameter tensor, the
// directional derivative of the loss along a random direction restricted to that tensor must
// match the analytic gradient's projection on it.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/check.h"
#include "core/rng.h"
#include "kernels/kernels.h"
#include "nn/gpt.h"

namespace trident::nn {
namespace {

GPTConfig tiny_shape() {
  GPTConfig c;
  c.n_layer = 2, c.n_head = 2, c.n_embd = 16, c.n_positions = 8, c.vocab_size = 37;
  c.vocab_pad_multiple = 8;  // padded to 40: padding must not change loss or gradients
  return c;
}

struct Fixture {
  GPTConfig cfg = tiny_shape();
  MemoryTracker tracker;
  GPT model{cfg};
  GPTActivations acts;
  std::vector<int32_t> ids, targets;
  static constexpr int64_t B = 2, T = 5;

  Fixture() {
    kernels::set_num_threads(1);
    model.allocate(tracker);
    model.params().initialize(7);
    // Larger-than-GPT-2 weights so every path carries a gradient well above rounding noise.
    FloatBuffer& v = model.params().values();
    for (std::size_t i = 0; i < v.size(); ++i) v[i] *= 5.0f;
    acts = model.make_activations(tracker, B, T);
    for (int64_t i = 0; i < B * T; ++i) {
      ids.push_back(static_cast<int32_t>((i * 7 + 3) % cfg.vocab_size));
      targets.push_back(static_cast<int32_t>((i * 11 + 5) % cfg.vocab_size));
    }
  }
  double loss() {
    return model.forward_loss(acts, ids.data(), targets.data(), B, T) / static_cast<double>(B * T);
  }
};

TEST(GptGradcheck, EveryParameterTensorMatchesFiniteDifferences) {
  Fixture f;
  ParameterSet& ps = f.model.params();
  ps.zero_grads();
  const double loss = f.model.forward_backward(f.acts, f.ids.data(), f.targets.data(), Fixture::B,
                                               Fixture::T, 1.0f / (Fixture::B * Fixture::T)) /
                      (Fixture::B * Fixture::T);
  EXPECT_NEAR(loss, f.loss(), 1e-6 * loss);
  std::vector<float> grad(ps.grads().data(), ps.grads().data() + ps.total_numel());

  for (int id = 0; id < ps.size(); ++id) {
    const ParamInfo& info = ps.info(id);
    float* w = ps.data(id);
    // Random unit direction over this tensor's real (non-padding) elements.
    std::vector<double> dir(static_cast<std::size_t>(info.numel), 0.0);
    double norm = 0.0;
    for_each_local_element(info, [&](int64_t l, int64_t g) {
      if (g < 0) return;
      dir[static_cast<std::size_t>(l)] = normal_at(99, static_cast<uint64_t>(id), static_cast<uint64_t>(l));
      norm += dir[static_cast<std::size_t>(l)] * dir[static_cast<std::size_t>(l)];
    });
    norm = std::sqrt(norm);
    double analytic = 0.0;
    for (int64_t i = 0; i < info.numel; ++i) {
      dir[static_cast<std::size_t>(i)] /= norm;
      analytic += dir[static_cast<std::size_t>(i)] * grad[static_cast<std::size_t>(info.offset + i)];
    }
    // Richardson extrapolation of two central differences cancels the eps^2 truncation term,
    // leaving O(eps^4) plus fp32 rounding of the loss (~1e-7 relative of L ~ 4, divided by
    // 2 eps ~ 1e-2: ~4e-5 absolute).
    std::vector<float> saved(w, w + info.numel);
    auto central = [&](double eps) {
      for (int64_t i = 0; i < info.numel; ++i) w[i] = saved[i] + static_cast<float>(eps * dir[i]);
      const double lp = f.loss();
      for (int64_t i = 0; i < info.numel; ++i) w[i] = saved[i] - static_cast<float>(eps * dir[i]);
      const double lm = f.loss();
      for (int64_t i = 0; i < info.numel; ++i) w[i] = saved[i];
      return (lp - lm) / (2 * eps);
    };
    const double numeric = (4.0 * central(5e-3) - central(1e-2)) / 3.0;
    const double tol = 2e-4 + 1e-3 * std::abs(numeric);
    EXPECT_NEAR(analytic, numeric, tol) << info.name;
    EXPECT_GT(std::abs(numeric), 1e-3) << info.name << ": direction carries no gradient, the check would be vacuous";
  }
}

TEST(GptGradcheck, PaddingRowsStayZeroAndGetNoGradient) {
  Fixture f;
  ParameterSet& ps = f.model.params();
  ps.zero_grads();
  f.model.forward_backward(f.acts, f.ids.data(), f.targets.data(), Fixture::B, Fixture::T, 1.0f);
  const int wte = ps.find("wte.weight");
  const ParamInfo& info = ps.info(wte);
  EXPECT_EQ(info.local_shape[0], 40);
  for (int64_t i = f.cfg.vocab_size * f.cfg.n_embd; i < info.numel; ++i) {
    ASSERT_EQ(ps.data(wte)[i], 0.0f);
    ASSERT_EQ(ps.grad(wte)[i], 0.0f);
  }
}

TEST(GptParameters, PresetCountsMatchGpt2) {
  EXPECT_EQ(gpt_preset("gpt2").num_parameters(), 124439808);
  EXPECT_EQ(gpt_preset("gpt2-medium").num_parameters(), 354823168);
  // The model's registered parameters (padding excluded) agree with the formula.
  GPT model(gpt_preset("small"));
  int64_t logical = 0;
  for (const ParamInfo& p : model.params().infos()) logical += shape_numel(p.logical_shape);
  EXPECT_EQ(logical, gpt_preset("small").num_parameters());
}

TEST(GptConfigValidation, BadShapesGiveClearErrors) {
  GPTConfig c = tiny_shape();
  c.n_head = 3;
  try {
    c.validate();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("divisible by n_head"), std::string::npos) << e.what();
  }
  c = tiny_shape();
  c.n_layer = 0;
  EXPECT_THROW(c.validate(), Error);
  c = tiny_shape();
  c.n_embd = -4;
  EXPECT_THROW(c.validate(), Error);
  EXPECT_THROW(gpt_preset("gpt5"), Error);
}

}  // namespace
}  // namespace trident::nn
