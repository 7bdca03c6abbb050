// Whole-model gradient check by central finite differences: for every parameter tensor, the
// directional derivative of the loss along that tensor's own gradient and along a random
// direction restricted to it must match the analytic gradient's projection, within a bound
// from fp32 rounding plus a measured truncation estimate (see the test).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdio>
#include <vector>

#include "core/check.h"
#include "core/rng.h"
#include "kernels/kernels.h"
#include "nn/llama_block.h"
#include "nn/model.h"

namespace trident::nn {
namespace {

ModelConfig tiny_shape() {
  ModelConfig c;
  c.n_layer = 2, c.n_head = 2, c.n_embd = 16, c.n_positions = 8, c.vocab_size = 37;
  c.vocab_pad_multiple = 8;  // padded to 40: padding must not change loss or gradients
  return c;
}

// Llama with grouped-query attention (4 query heads on 2 key/value heads), an untied head
// and an MLP width (48) no longer than GPT-2's 4C: the same reduction lengths as below.
ModelConfig llama_gqa_shape() {
  ModelConfig c = tiny_shape();
  c.family = Family::kLlama;
  c.n_head = 4, c.n_kv_head = 2, c.n_inner = 48, c.tie_word_embeddings = false;
  c.rope_theta = 10000.0, c.norm_eps = 1e-5;
  return c;
}

// Llama with multi-head attention and the head tied to the embedding.
ModelConfig llama_tied_mha_shape() {
  ModelConfig c = llama_gqa_shape();
  c.n_head = 2, c.n_kv_head = 0, c.tie_word_embeddings = true;
  return c;
}

// Mixtral: Llama's attention with 4 SwiGLU experts of width 24, top-2, the routing weights
// renormalised or not, and a load-balancing weight large enough that the aux loss's share of
// the router gradient is well above rounding (coef 0.5 averaged over 2 layers x 2 sequences),
// and the router z-loss on likewise (coef 0.1 averaged over 2 layers x 10 tokens).
ModelConfig mixtral_shape(bool norm_topk) {
  ModelConfig c = llama_gqa_shape();
  c.family = Family::kMixtral;
  c.n_inner = 24, c.n_experts = 4, c.n_experts_per_tok = 2, c.norm_topk_prob = norm_topk;
  c.router_aux_loss_coef = 0.5;
  c.router_z_loss_coef = 0.1;
  return c;
}

struct Fixture {
  ModelConfig cfg;
  MemoryTracker tracker;
  Model model{cfg};
  ModelActivations acts;
  std::vector<int32_t> ids, targets;
  static constexpr int64_t B = 2, T = 5;

  explicit Fixture(ModelConfig c = tiny_shape()) : cfg(c) {
    kernels::set_num_threads(1);
    model.allocate(tracker);
    model.params().initialize(7);
    // Larger-than-GPT-2 weights so every path carries a gradient well above rounding noise.
    FloatBuffer& v = model.params().values();
    for (std::size_t i = 0; i < v.size(); ++i) v[i] *= 5.0f;
    acts = model.make_activations(tracker, B, T);
    if (cfg.is_moe()) {
      moe_weights = {static_cast<float>(cfg.router_aux_loss_coef / (cfg.moe_layers() * B)),
                     static_cast<float>(cfg.router_z_loss_coef / (cfg.moe_layers() * B * T))};
      model.set_moe_loss_weights(moe_weights);
    }
    for (int64_t i = 0; i < B * T; ++i) {
      ids.push_back(static_cast<int32_t>((i * 7 + 3) % cfg.vocab_size));
      targets.push_back(static_cast<int32_t>((i * 11 + 5) % cfg.vocab_size));
    }
  }
  MoeLossWeights moe_weights;
  // The objective as training sees it: the mean token loss plus the weighted aux and z losses
  // of the forward that left acts.
  double aux_term() const {
    double aux = 0.0, z = 0.0;
    if (!cfg.is_moe()) return 0.0;
    for (const auto& b : acts.blocks) {
      if (const auto* moe = static_cast<const LlamaBlockActivations&>(*b).moe.get()) {
        aux += moe->aux_sum;
        z += moe->z_sum;
      }
    }
    return moe_weights.aux * aux + moe_weights.z * z;
  }
  // The token-to-expert assignment of the last forward (empty for dense models).
  std::vector<int32_t> routing() const {
    std::vector<int32_t> r;
    if (!cfg.is_moe()) return r;  // only Llama-family blocks carry routing
    for (const auto& b : acts.blocks) {
      if (const auto* moe = static_cast<const LlamaBlockActivations&>(*b).moe.get()) {
        r.insert(r.end(), moe->experts.begin(), moe->experts.end());
      }
    }
    return r;
  }
  double loss() {
    return model.forward_loss(acts, ids.data(), targets.data(), B, T) / static_cast<double>(B * T) + aux_term();
  }
};

// Tolerance, from fp32 rounding. One loss evaluation (the mean of B*T per-token fp32 losses,
// each through reductions of at most V = 37 and 4C = 64 terms) is off by at most
// delta = 4 u L (u = 2^-24, L ~ 4; 4 covers the longest reductions' sqrt(n) growth). The
// Richardson combination (4 c(e) - c(2e)) / 3 of central differences c(e) = (L+ - L-) / 2e
// carries (4 * 2 delta / 2e + 2 delta / 4e) / 3 = 1.5 delta / e of it. Its truncation is
// O(e^4), estimated from a third difference: r(e) and r(2e) differ by 15/16 of r(2e)'s
// remainder, so |r(e) - r(2e)| / 15 is r(e)'s (counted twice). e is chosen per tensor so the
// step changes the loss by 0.5% (e = 0.005 L / |g|, at most 0.02): small enough for the
// curvature of the x5 weights, large enough that the rounding term (7e-5 at e = 0.02) is
// <= 2e-3 of |g| for the weakest tensor (it was ~20% with a fixed step and 1e-3 relative). The analytic side is projected on the
// step actually applied (w +- e d rounded to fp32), so rounding the perturbation costs nothing.
// Each tensor is checked along its own gradient (the derivative is |g| there: the magnitude to
// ~1e-4 relative) and along a random direction (an error orthogonal to g shows at first order).
void check_every_tensor(const ModelConfig& cfg) {
  Fixture f(cfg);
  ParameterSet& ps = f.model.params();
  ps.zero_grads();
  const double loss = f.model.forward_backward(f.acts, f.ids.data(), f.targets.data(), Fixture::B,
                                               Fixture::T, 1.0f / (Fixture::B * Fixture::T)) /
                          (Fixture::B * Fixture::T) +
                      f.aux_term();
  EXPECT_NEAR(loss, f.loss(), 1e-6 * loss);
  std::vector<float> grad(ps.grads().data(), ps.grads().data() + ps.total_numel());
  // The top-k routing makes the loss piecewise smooth: a difference whose steps changed any
  // token's experts measures a jump, not the derivative, so such a check is retried with a
  // step 4x smaller (the rounding tolerance grows as 1 / step, which keeps it honest).
  f.loss();
  const std::vector<int32_t> base_routing = f.routing();
  bool routing_changed = false;
  const double u = 1.0 / (1 << 24), delta = 4 * u * loss;

  for (int id = 0; id < ps.size(); ++id) {
    const ParamInfo& info = ps.info(id);
    float* w = ps.data(id);
    const float* g = grad.data() + info.offset;
    std::vector<float> saved(w, w + info.numel);
    std::vector<double> random(static_cast<std::size_t>(info.numel), 0.0), along(random.size(), 0.0);
    double rnorm = 0.0, gnorm = 0.0;
    for_each_local_element(info, [&](int64_t l, int64_t gi) {
      if (gi < 0) return;  // padding rows: not part of the function
      const auto i = static_cast<std::size_t>(l);
      random[i] = normal_at(99, static_cast<uint64_t>(id), static_cast<uint64_t>(l));
      along[i] = g[l];
      rnorm += random[i] * random[i];
      gnorm += along[i] * along[i];
    });
    rnorm = std::sqrt(rnorm), gnorm = std::sqrt(gnorm);
    ASSERT_GT(gnorm, 1e3 * delta) << info.name << ": no gradient to check";
    double e = std::min(2e-2, 5e-3 * loss / gnorm);
    // (numeric, analytic) Richardson-combined along unit direction d.
    auto check_along = [&](std::vector<double> d, double dnorm) {
      for (double& x : d) x /= dnorm;
      auto central = [&](double step, double* analytic) {
        std::vector<float> plus(saved), minus(saved);
        for (int64_t i = 0; i < info.numel; ++i) {
          plus[i] = saved[i] + static_cast<float>(step * d[i]);
          minus[i] = saved[i] - static_cast<float>(step * d[i]);
        }
        std::copy(plus.begin(), plus.end(), w);
        const double lp = f.loss();
        routing_changed |= f.routing() != base_routing;
        std::copy(minus.begin(), minus.end(), w);
        const double lm = f.loss();
        routing_changed |= f.routing() != base_routing;
        std::copy(saved.begin(), saved.end(), w);
        *analytic = 0.0;
        for (int64_t i = 0; i < info.numel; ++i) {
          *analytic += static_cast<double>(g[i]) * (static_cast<double>(plus[i]) - minus[i]) / (2 * step);
        }
        return (lp - lm) / (2 * step);
      };
      double a1 = 0, a2 = 0, a4 = 0;
      const double c1 = central(e, &a1), c2 = central(2 * e, &a2), c4 = central(4 * e, &a4);
      const double r1 = (4 * c1 - c2) / 3, r2 = (4 * c2 - c4) / 3;
      // r1's O(e^4) remainder is 1/16 of r2's, so |r1 - r2| / 15 estimates it.
      struct Out {
        double numeric, analytic, tol;
      };
      return Out{r1, (4 * a1 - a2) / 3, 1.5 * delta / e + 2 * std::abs(r1 - r2) / 15};
    };
    auto smooth = [&](std::vector<double> d, double dnorm) {
      for (int attempt = 0;; ++attempt) {
        routing_changed = false;
        const auto r = check_along(d, dnorm);
        if (!routing_changed) return r;
        EXPECT_LT(attempt, 6) << info.name << ": every step changed the routing";
        if (attempt >= 6) return r;
        e /= 4;
      }
    };
    const auto along_g = smooth(along, gnorm);
    EXPECT_NEAR(along_g.analytic, along_g.numeric, along_g.tol)
        << info.name << " along its gradient (|g| " << gnorm << ", step " << e << ")";
    const auto along_r = smooth(random, rnorm);
    EXPECT_NEAR(along_r.analytic, along_r.numeric, along_r.tol)
        << info.name << " along a random direction (|g| " << gnorm << ", step " << e << ")";
    std::printf("%-22s |g| %.3e step %.1e  along g: off %.1e tol %.1e (%.1e rel)  random: %+.4e off %.1e tol %.1e\n",
                info.name.c_str(), gnorm, e, std::abs(along_g.analytic - along_g.numeric), along_g.tol,
                along_g.tol / gnorm, along_r.numeric, std::abs(along_r.analytic - along_r.numeric), along_r.tol);
  }
}

TEST(GptGradcheck, EveryParameterTensorMatchesFiniteDifferences) { check_every_tensor(tiny_shape()); }
// RMSNorm, RoPE, SwiGLU and grouped-query attention backward through the whole model.
TEST(LlamaGradcheck, GqaUntiedEveryParameterTensorMatchesFiniteDifferences) {
  check_every_tensor(llama_gqa_shape());
}
TEST(LlamaGradcheck, MhaTiedEveryParameterTensorMatchesFiniteDifferences) {
  check_every_tensor(llama_tied_mha_shape());
}

// The mixture of experts: router (through the routing weights and the load-balancing loss),
// experts, softmax and renormalisation backward through the whole model.
TEST(MixtralGradcheck, RenormalisedTopKEveryParameterTensorMatchesFiniteDifferences) {
  check_every_tensor(mixtral_shape(true));
}
TEST(MixtralGradcheck, UnnormalisedTopKEveryParameterTensorMatchesFiniteDifferences) {
  check_every_tensor(mixtral_shape(false));
}
// DeepSeek-V3's layer mix: layer 0 dense (first_k_dense 1), layer 1 the experts plus two shared
// experts (one SwiGLU of width 48); the aux and z weights then average over the one MoE layer.
TEST(MixtralGradcheck, FirstKDenseAndSharedExpertsEveryParameterTensorMatchesFiniteDifferences) {
  ModelConfig c = mixtral_shape(true);
  c.first_k_dense = 1, c.n_shared_experts = 2;
  check_every_tensor(c);
}

// DeepSeek-V3's router: sigmoid scores (backward through each s (1 - s)), weights times
// routed_scaling_factor 2.5, 6 experts in 3 groups of which the best 2 are eligible, the aux loss
// on the normalised affinities s / sum s (its gradient through that normalisation); with the
// dense layer 24 wide and the experts and shared expert 16 (moe_intermediate_size). z-loss off (a
// softmax router's).
ModelConfig deepseek_shape(bool norm_topk) {
  ModelConfig c = mixtral_shape(norm_topk);
  c.n_experts = 6, c.scoring = RouterScoring::kSigmoid, c.routed_scaling_factor = 2.5;
  c.n_group = 3, c.topk_group = 2, c.router_z_loss_coef = 0.0;
  c.first_k_dense = 1, c.n_shared_experts = 1, c.moe_inner = 16;
  return c;
}
TEST(MixtralGradcheck, SigmoidGroupLimitedRouterEveryParameterTensorMatchesFiniteDifferences) {
  check_every_tensor(deepseek_shape(true));
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
  EXPECT_EQ(model_preset("gpt2").num_parameters(), 124439808);
  EXPECT_EQ(model_preset("gpt2-medium").num_parameters(), 354823168);
  // The model's registered parameters (padding excluded) agree with the formula.
  Model model(model_preset("small"));
  int64_t logical = 0;
  for (const ParamInfo& p : model.params().infos()) logical += shape_numel(p.logical_shape);
  EXPECT_EQ(logical, model_preset("small").num_parameters());
}

TEST(GptConfigValidation, BadShapesGiveClearErrors) {
  ModelConfig c = tiny_shape();
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
  EXPECT_THROW(model_preset("gpt5"), Error);
}

}  // namespace
}  // namespace trident::nn
