// LoRA (nn/lora.h, nn/lora_adapter.h): the targets each family declares and the errors for bad
// ones; the adapter declarations' splits and PEFT's initialisation; the adapter's backward
// against central finite differences of its own forward, on a fused column-parallel run
// (adapters on some of its weights), a Conv1D column layer with bias and a row-parallel one;
// a frozen base gets no weight gradient while its input gradient still flows.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/memory.h"
#include "core/rng.h"
#include "kernels/kernels.h"
#include "nn/architecture.h"
#include "nn/column_parallel_linear.h"
#include "nn/gpt2_layer_decls.h"
#include "nn/llama_layer_decls.h"
#include "nn/lora.h"
#include "nn/lora_adapter.h"
#include "nn/lora_merge.h"
#include "nn/model.h"
#include "nn/row_parallel_linear.h"

namespace trident::nn {
namespace {

ModelConfig with_lora(const char* preset, int rank, std::vector<std::string> targets, double alpha = 16.0) {
  ModelConfig c = model_preset(preset);
  c.lora = LoraConfig{.rank = rank, .alpha = alpha, .targets = std::move(targets)};
  return c;
}

void expect_error(const ModelConfig& c, const std::string& needle) {
  try {
    c.validate();
    FAIL() << "accepted; expected an error containing: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(LoraConfig, FamiliesDeclareTheirTargets) {
  auto names = [](const char* preset) {
    std::vector<std::string> v;
    const ModelConfig c = model_preset(preset);
    for (const LoraTarget& t : architecture(c.family).lora_targets(c, 0)) v.push_back(t.short_name);
    return fmt::format("{}", fmt::join(v, ","));
  };
  EXPECT_EQ(names("llama-tiny"), "q,k,v,o,gate,up,down");
  EXPECT_EQ(names("tiny"), "c_attn,attn.c_proj,c_fc,mlp.c_proj");
  EXPECT_EQ(names("mixtral-tiny"), "q,k,v,o");
  with_lora("llama-tiny", 4, {"q", "v", "down"}).validate();
  with_lora("tiny", 4, {"c_attn", "mlp.c_proj"}).validate();
  with_lora("mixtral-tiny", 2, {"q", "o"}).validate();
  with_lora("tiny", 0, {}).validate();  // off
}

TEST(LoraConfig, BadInputIsOneClearError) {
  expect_error(with_lora("llama-tiny", 4, {"q", "c_attn"}), "unknown LoRA target c_attn for llama: its targets are q,k,v,o");
  expect_error(with_lora("tiny", 4, {"q"}), "unknown LoRA target q for gpt2");
  expect_error(with_lora("llama-tiny", -1, {"q"}), "is negative");
  expect_error(with_lora("llama-tiny", 0, {"q"}), "without --lora-rank");
  expect_error(with_lora("llama-tiny", 4, {}), "without --lora-targets");
  expect_error(with_lora("llama-tiny", 4, {"q", "q"}), "named twice");
  expect_error(with_lora("llama-tiny", 4, {"q"}, 0.0), "alpha");
  const ModelConfig c = model_preset("llama-tiny");
  expect_error(with_lora("llama-tiny", c.n_embd + 1, {"q"}), "larger than target q");
  expect_error(with_lora("mixtral-tiny", 2, {"gate"}), "experts");
}

TEST(LoraDecls, SplitFollowsTheBaseAndAIsPeftUniform) {
  const ModelConfig c = with_lora("llama-tiny", 4, {"q", "o"});
  const LlamaLayerDecls d = llama_layer_decls(c, 0);
  const LoraDecls q = lora_decls(d.q_proj, 4), o = lora_decls(d.o_proj, 4);
  EXPECT_EQ(q.a.name, "model.layers.0.self_attn.q_proj.lora_A.weight");
  EXPECT_EQ(q.b.name, "model.layers.0.self_attn.q_proj.lora_B.weight");
  EXPECT_EQ(q.a.shape, (Shape{4, c.n_embd}));
  EXPECT_EQ(q.b.shape, (Shape{c.n_head * c.head_size(), 4}));
  // Column-parallel q: B's rows split by heads, A replicated; row-parallel o: A's columns split.
  EXPECT_EQ(q.a.split, TpSplit::kReplicated);
  EXPECT_EQ(q.b.split, TpSplit::kSplit);
  EXPECT_EQ(q.b.dim, 0);
  EXPECT_EQ(q.b.unit, d.q_proj.unit);
  EXPECT_EQ(o.a.split, TpSplit::kSplit);
  EXPECT_EQ(o.a.dim, 1);
  EXPECT_EQ(o.b.split, TpSplit::kReplicated);
  // GPT-2's fused Conv1D c_attn [C, 3C]: B [3C, r] in three sections of whole heads.
  const ModelConfig g = with_lora("tiny", 4, {"c_attn"});
  const LoraDecls ca = lora_decls(gpt2_layer_decls(g, 0).c_attn_weight, 4);
  EXPECT_EQ(ca.b.shape, (Shape{3 * g.n_embd, 4}));
  EXPECT_EQ(ca.b.sections, 3);
  // A ~ U(-1/sqrt(in), 1/sqrt(in)) and uses the range; B zero; only adapters trainable.
  MemoryTracker tracker;
  ParameterSet ps;
  ps.begin_group("h.0");
  add_declared(ps, {d.q_proj}, c, 0, 1);
  add_lora(ps, c, 0, 0, 1);
  ps.allocate(tracker);
  ps.initialize(3);
  const int a = ps.find(q.a.name), b = ps.find(q.b.name);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  EXPECT_TRUE(ps.info(ps.find(d.q_proj.name)).frozen);
  EXPECT_FALSE(ps.info(a).frozen);
  const float bound = 1.0f / std::sqrt(static_cast<float>(c.n_embd));
  float lo = 1, hi = -1;
  for (int64_t i = 0; i < ps.info(a).numel; ++i) {
    lo = std::min(lo, ps.data(a)[i]);
    hi = std::max(hi, ps.data(a)[i]);
  }
  EXPECT_GE(lo, -bound);
  EXPECT_LE(hi, bound);
  EXPECT_LT(lo, -0.9f * bound);
  EXPECT_GT(hi, 0.9f * bound);
  for (int64_t i = 0; i < ps.info(b).numel; ++i) ASSERT_EQ(ps.data(b)[i], 0.0f);
}

// ---- the adapter's backward against finite differences ----

constexpr int64_t N = 9, C = 12, R = 3;
constexpr float kScale = 2.5f;  // alpha / r

std::vector<float> filled(int64_t n, uint64_t stream, float s = 1.0f) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = s * normal_at(5, stream, static_cast<uint64_t>(i));
  return v;
}

// A layer with its base weights frozen and adapters on `adapted`; runs forward/backward.
struct Harness {
  MemoryTracker tracker;
  ParameterSet ps;
  std::vector<ParamDecl> decls;
  std::vector<float> work;
  SharedScratch scratch;
  ModelConfig cfg;
  Harness(std::vector<ParamDecl> base, const std::vector<std::size_t>& adapted) : decls(std::move(base)) {
    cfg.lora = LoraConfig{.rank = static_cast<int>(R), .alpha = kScale * R, .targets = {"x"}};
    ps.begin_group("layer");
    add_declared(ps, decls, cfg, 0, 1);
    for (std::size_t i : adapted) {
      const LoraDecls d = lora_decls(decls[i], static_cast<int>(R));
      add_declared(ps, {d.a, d.b}, cfg, 0, 1);
    }
    ps.allocate(tracker);
    ps.initialize(9);
    // B non-zero (a trained adapter), gradients non-zero: they must accumulate.
    for (int id = 0; id < ps.size(); ++id) {
      const ParamInfo& p = ps.info(id);
      if (p.init_std == 0.0f && p.init_uniform == 0.0f && p.local_shape.size() == 2) {
        for (int64_t j = 0; j < p.numel; ++j) ps.data(id)[j] = 0.3f * std::cos(static_cast<float>(3 * j + id));
      }
      // A frozen parameter has no gradient slot (ParameterSet: the buffer holds the trained ones).
      if (p.frozen) {
        EXPECT_EQ(ps.grad(id), nullptr) << p.name << " is frozen but has gradient storage";
        continue;
      }
      for (int64_t j = 0; j < p.numel; ++j) ps.grad(id)[j] = 0.125f * std::sin(static_cast<float>(j + id));
    }
    work.assign(4096, 0.0f);
    scratch.lora = FloatBuffer(tracker, MemCategory::kWorkspace, 4096);
  }
  LoraContext ctx() const { return LoraContext{.scale = kScale, .tp = TpContext{}}; }
};

// L = sum(out * g) for a fixed g: bilinear in A and B and linear in x, so the central
// difference has no truncation error; what is left is fp32 rounding of L.
void check_gradients(Harness& h, int64_t in, int64_t out, const std::function<void(float*, const float*)>& forward,
                     const std::function<void(float*, const float*, const float*)>& backward) {
  kernels::set_num_threads(1);
  std::vector<float> x = filled(N * in, 1), g = filled(N * out, 2), y(static_cast<std::size_t>(N * out));
  auto loss = [&](double* abs_sum) {
    forward(y.data(), x.data());
    double l = 0, s = 0;
    for (std::size_t i = 0; i < y.size(); ++i) {
      l += static_cast<double>(y[i]) * g[i];
      s += std::abs(static_cast<double>(y[i]) * g[i]);
    }
    if (abs_sum != nullptr) *abs_sum = s;
    return l;
  };
  double S = 0;
  (void)loss(&S);
  std::vector<std::vector<float>> grads_before;
  for (int id = 0; id < h.ps.size(); ++id) {
    if (h.ps.grad(id) == nullptr) {  // frozen: no slot, which the backward must not write through
      grads_before.emplace_back();
      continue;
    }
    grads_before.emplace_back(h.ps.grad(id), h.ps.grad(id) + h.ps.info(id).numel);
  }
  std::vector<float> dx(static_cast<std::size_t>(N * in));
  forward(y.data(), x.data());
  backward(dx.data(), g.data(), x.data());
  // Rounding of L: every product is a reduction over at most in + R terms, L one over N out:
  // |dL| <= eps (in + R + N out) S; the difference divides two such errors by 2 step.
  const double eps = 6e-8, step = 0.25;
  const double tol = 2.0 * eps * static_cast<double>(in + R + N * out) * S / (2.0 * step) + 1e-6;
  auto fd = [&](float* p) {
    const float keep = *p;
    *p = keep + static_cast<float>(step);
    const double lp = loss(nullptr);
    *p = keep - static_cast<float>(step);
    const double lm = loss(nullptr);
    *p = keep;
    return (lp - lm) / (2.0 * step);
  };
  for (int id = 0; id < h.ps.size(); ++id) {
    const ParamInfo& p = h.ps.info(id);
    if (p.frozen) {
      ASSERT_EQ(h.ps.grad(id), nullptr) << p.name;
      continue;
    }
    for (int64_t j = 0; j < p.numel; ++j) {
      const double got = h.ps.grad(id)[j] - grads_before[static_cast<std::size_t>(id)][static_cast<std::size_t>(j)];
      ASSERT_NEAR(got, fd(h.ps.data(id) + j), tol) << p.name << " element " << j;
    }
  }
  for (std::size_t j = 0; j < x.size(); ++j) ASSERT_NEAR(dx[j], fd(&x[j]), tol) << "input element " << j;
}

TEST(LoraAdapter, FusedColumnRunMatchesFiniteDifferences) {
  // q, k, v of a fused run (nn.Linear [out, in]); adapters on q and v only.
  auto lin = [](const char* n, int64_t out) {
    return ParamDecl{.name = n, .shape = {out, C}, .split = TpSplit::kSplit, .init_std = 0.4f};
  };
  Harness h({lin("q.weight", 8), lin("k.weight", 4), lin("v.weight", 4)}, {0, 2});
  const LoraContext ctx = h.ctx();
  const ColumnParallelLinear col(h.ps, {&h.decls[0], &h.decls[1], &h.decls[2]}, nullptr, &ctx);
  ASSERT_TRUE(col.fused(h.ps, false));
  kernels::MatmulEngine mm;
  check_gradients(
      h, C, 16, [&](float* y, const float* x) { col.forward(mm, h.ps, y, x, N, h.work.data(), h.scratch.lora.data()); },
      [&](float* dx, const float* dy, const float* x) {
        col.backward(mm, h.ps, dx, dy, x, N, h.work.data(), h.scratch.lora.data());
      });
}

TEST(LoraAdapter, Conv1dColumnWithBiasMatchesFiniteDifferences) {
  // GPT-2's c_attn layout: Conv1D [in, out] with a bias; the bias is frozen with the weight.
  Harness h({ParamDecl{.name = "c.weight", .shape = {C, 10}, .split = TpSplit::kSplit, .dim = 1, .init_std = 0.4f,
                       .in_out = true},
             ParamDecl{.name = "c.bias", .shape = {10}, .split = TpSplit::kSplit, .init_std = 0.1f}},
            {0});
  const LoraContext ctx = h.ctx();
  const ColumnParallelLinear col(h.ps, {&h.decls[0]}, &h.decls[1], &ctx);
  kernels::MatmulEngine mm;
  check_gradients(
      h, C, 10, [&](float* y, const float* x) { col.forward(mm, h.ps, y, x, N, h.work.data(), h.scratch.lora.data()); },
      [&](float* dx, const float* dy, const float* x) {
        col.backward(mm, h.ps, dx, dy, x, N, h.work.data(), h.scratch.lora.data());
      });
}

TEST(LoraAdapter, RowParallelMatchesFiniteDifferences) {
  // Llama's o_proj / down_proj layout: nn.Linear [out, in] split by inputs.
  Harness h({ParamDecl{.name = "o.weight", .shape = {7, C}, .split = TpSplit::kSplit, .dim = 1, .init_std = 0.4f}},
            {0});
  const LoraContext ctx = h.ctx();
  const RowParallelLinear row(h.ps, h.decls[0], nullptr, &ctx);
  const TpContext tp;
  kernels::MatmulEngine mm;
  check_gradients(
      h, C, 7, [&](float* y, const float* x) { row.forward(mm, h.ps, tp, h.scratch, y, x, N); },
      [&](float* dx, const float* dy, const float* x) { row.backward(mm, h.ps, tp, h.scratch, dx, dy, x, N); });
}

TEST(LoraAdapter, FreshAdapterLeavesTheBaseOutputBitwise) {
  // B = 0 at initialisation: the adapted layer's output is the base layer's, bit for bit.
  auto lin = [](const char* n, int64_t out) {
    return ParamDecl{.name = n, .shape = {out, C}, .split = TpSplit::kSplit, .init_std = 0.4f};
  };
  Harness h({lin("q.weight", 8), lin("k.weight", 4)}, {0, 1});
  h.ps.initialize(9);  // undo the harness's non-zero B
  const LoraContext ctx = h.ctx();
  const ColumnParallelLinear adapted(h.ps, {&h.decls[0], &h.decls[1]}, nullptr, &ctx);
  const ColumnParallelLinear plain(h.ps, {&h.decls[0], &h.decls[1]});
  kernels::MatmulEngine mm;
  const std::vector<float> x = filled(N * C, 1);
  std::vector<float> y1(N * 12), y2(N * 12);
  adapted.forward(mm, h.ps, y1.data(), x.data(), N, h.work.data(), h.scratch.lora.data());
  plain.forward(mm, h.ps, y2.data(), x.data(), N, h.work.data());
  EXPECT_EQ(y1, y2);
}

// merge-lora's W += s B A gives the adapter model's logits: the two differ only in where the
// adapter's product is rounded. Each stage's dot products gain at most r terms and one rounding
// of W', so a worst-case (Higham) bound per stage is (n + r + 1) u with n its longest reduction;
// over the D = 2L + 1 stages of every path the logits are within D (n + r + 1) u max|logit|.
void expect_merged_matches(ModelConfig cfg) {
  kernels::set_num_threads(1);
  ModelConfig plain = cfg;
  plain.lora = {};
  const int64_t B = 2, T = 8, N = B * T;
  MemoryTracker tracker;
  Model adapted(cfg), merged(plain);
  adapted.allocate(tracker);
  merged.allocate(tracker);
  ParameterSet& pa = adapted.params();
  ParameterSet& pm = merged.params();
  pa.initialize(21);
  for (int id = 0; id < pa.size(); ++id) {  // a trained adapter: B non-zero
    if (!pa.info(id).name.ends_with("lora_B.weight")) continue;
    for (int64_t i = 0; i < pa.info(id).numel; ++i) pa.data(id)[i] = 0.2f * normal_at(3, id, static_cast<uint64_t>(i));
  }
  for (int id = 0; id < pm.size(); ++id) {
    const int src = pa.find(pm.info(id).name);
    ASSERT_GE(src, 0);
    std::copy_n(pa.data(src), pm.info(id).numel, pm.data(id));
  }
  int count = 0;
  for (int l = 0; l < cfg.n_layer; ++l) {
    for (const LoraTarget& t : selected_lora_targets(cfg, l)) {
      const LoraDecls d = lora_decls(t.base, cfg.lora.rank);
      merge_lora(t.base, cfg.lora.scale(), cfg.lora.rank, pm.data(pm.find(t.base.name)), pa.data(pa.find(d.a.name)),
                 pa.data(pa.find(d.b.name)));
      ++count;
    }
  }
  ASSERT_EQ(count, cfg.n_layer * static_cast<int>(cfg.lora.targets.size()));
  std::vector<int32_t> ids(N);
  for (int64_t i = 0; i < N; ++i) ids[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 7 + 3) % cfg.vocab_size);
  ModelActivations aa = adapted.make_activations(tracker, B, T), am = merged.make_activations(tracker, B, T);
  const int64_t V = adapted.padded_vocab_local();
  const float* la = adapted.forward_logits(aa, ids.data(), B, T);
  std::vector<float> want(la, la + N * V);
  const float* lm = merged.forward_logits(am, ids.data(), B, T);
  double worst = 0, scale = 0;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t v = 0; v < cfg.vocab_size; ++v) {
      worst = std::max(worst, std::abs(static_cast<double>(lm[n * V + v]) - want[static_cast<std::size_t>(n * V + v)]));
      scale = std::max(scale, std::abs(static_cast<double>(want[static_cast<std::size_t>(n * V + v)])));
    }
  }
  const int64_t n = std::max<int64_t>({cfg.n_embd, cfg.mlp_width(), T});
  const double bound = (2.0 * cfg.n_layer + 1) * static_cast<double>(n + cfg.lora.rank + 1) * 6e-8 * scale;
  EXPECT_LE(worst, bound) << "logit scale " << scale;
  // ... and the adapters matter: the base alone is far off.
  EXPECT_GT(worst, 0.0);
  std::printf("merged vs adapter logits: max diff %.3g (bound %.3g, scale %.3g)\n", worst, bound, scale);
}

TEST(LoraMerge, MergedModelGivesTheAdapterModelsLogits) {
  ModelConfig llama = model_preset("llama-tiny");
  llama.n_layer = 2;
  llama.vocab_size = 96;
  llama.lora = LoraConfig{.rank = 4, .alpha = 8.0, .targets = {"q", "v", "o", "up", "down"}};
  llama.validate();
  expect_merged_matches(llama);
  ModelConfig gpt2 = model_preset("tiny");
  gpt2.n_layer = 2;
  gpt2.vocab_size = 96;
  gpt2.lora = LoraConfig{.rank = 3, .alpha = 6.0, .targets = {"c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"}};
  gpt2.validate();
  expect_merged_matches(gpt2);  // Conv1D: the merge transposes B A
  ModelConfig mixtral = model_preset("mixtral-tiny");
  mixtral.n_layer = 2;
  mixtral.vocab_size = 96;
  mixtral.lora = LoraConfig{.rank = 2, .alpha = 4.0, .targets = {"q", "k", "v", "o"}};
  mixtral.validate();
  expect_merged_matches(mixtral);  // attention adapters beside frozen experts
}

}  // namespace
}  // namespace trident::nn
