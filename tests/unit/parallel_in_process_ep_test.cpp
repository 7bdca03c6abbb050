// Expert-parallel dispatch and combine (nn/moe_mlp.h over parallel/expert_parallel_comm.h) with
// the ep ranks as threads of this process (comm/in_process.h), the ep group from a Mesh (dp = ep
// = P) over the in-process world: mixtral-tiny (2 layers, 4 experts, top 2, aux and z losses on),
// ep 2 and 4, rank q holding sequences [q B, (q + 1) B) of a batch of P B, dloss per token of
// the whole batch. Against ep 1:
//   - exactly: each token's routing (its k experts) is the one-rank routing of the whole batch,
//     and each owner receives exactly the whole batch's rows of its experts;
//   - rank q's loss, aux and z sums and every dense gradient (attention, norms, router,
//     embedding, head) are those of one rank running q's B sequences alone (a token's forward
//     depends on its own row; the combine adds its k outputs in expert-id order);
//   - every expert gradient on its owner is that of one rank running the whole batch (the
//     owner's rows are the whole batch's rows of that expert, in token order).
// The floats are the same sums of the same terms; only OpenBLAS's fp32 sgemm rounds a product
// differently for another number of rows in the call (docs/moe.md: an owner multiplies its ep
// group's rows at once, a dense layer its rank's), which changes each rounding of a sum of
// length L by at most L u |terms|. Bound per tensor: max |diff| <= (C + N) u max |ref|, C =
// n_embd the longest product, N = the batch's tokens the longest row sum, u = 2^-24 (32 + 64
// tokens at ep 4: 5.7e-6 relative; measured <= 4.6e-7). A dispatch or combine error moves a
// gradient by O(1) of itself. In bf16 the matmuls' own kernel rounds per row whatever the
// call's size, and the expert gradients are then bitwise those of one rank.
// Two routings: the model's own (variable row counts per expert and source) and a forced one
// (a zero router: all logits tie, the lowest ids win), where experts 2 and 3 get no token, so
// at ep 2 rank 1 receives zero rows and at ep 4 ranks 2 and 3 do. No mpirun.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "comm/in_process.h"
#include "comm/mesh.h"
#include "kernels/kernels.h"
#include "nn/llama_block.h"
#include "nn/model.h"
#include "parallel/expert_parallel_comm.h"

namespace trident::parallel {
namespace {

constexpr int64_t kB = 2, kT = 8;
constexpr uint64_t kSeed = 11;

comm::CommOptions test_options() {
  comm::CommOptions o;
  o.timeout_s = 60.0;
  o.on_timeout = comm::TimeoutAction::kThrow;
  return o;
}

// deepseek: DeepSeek-V3's router (sigmoid scores, weights x 2.5, the 4 experts in 2 groups of
// which 1 is eligible) and widths (experts 32 wide, one shared expert, the dense width 48 unused
// by the routed layers).
nn::ModelConfig moe_shape(bool deepseek = false) {
  nn::ModelConfig c = nn::model_preset("mixtral-tiny");
  c.n_layer = 2, c.n_positions = kT, c.vocab_size = 50, c.vocab_pad_multiple = 8;
  if (deepseek) {
    c.scoring = nn::RouterScoring::kSigmoid, c.routed_scaling_factor = 2.5, c.n_group = 2, c.topk_group = 1;
    c.moe_inner = 32, c.n_shared_experts = 1, c.router_z_loss_coef = 0.0;
  }
  return c;
}

// Sequence `row` of the global batch.
void fill(int64_t row, int32_t* ids, int32_t* targets) {
  for (int64_t t = 0; t < kT; ++t) {
    ids[t] = static_cast<int32_t>((row * 131 + t * 17 + (row * t) % 7) % 50);
    targets[t] = static_cast<int32_t>((row * 29 + t * 11 + 3) % 50);
  }
}

// One forward and backward of `rows` sequences from `first`; what the comparisons read.
struct Run {
  double loss = 0.0, aux = 0.0, z = 0.0;
  std::vector<std::vector<int32_t>> experts;     // per layer, (N, k)
  std::vector<std::vector<int64_t>> recv_rows;   // per layer: rows this rank's experts got, by local expert
  std::map<std::string, std::vector<float>> grads;
  std::map<std::string, int> expert_of;          // parameter -> expert (-1: dense)
};

Run run(const nn::TpContext& ctx, int64_t first, int64_t rows, float dloss, bool forced, kernels::Precision precision,
        bool deepseek) {
  const nn::ModelConfig cfg = moe_shape(deepseek);
  MemoryTracker tracker;
  nn::Model model(cfg, ctx);
  model.set_precision(precision);
  model.allocate(tracker);
  model.params().initialize(kSeed);
  model.set_moe_loss_weights({0.1f, 0.1f});
  nn::ParameterSet& ps = model.params();
  if (forced) {
    for (int l = 0; l < cfg.n_layer; ++l) {
      const int r = ps.find(fmt::format("model.layers.{}.block_sparse_moe.gate.weight", l));
      std::fill_n(ps.data(r), ps.info(r).numel, 0.0f);
    }
  }
  std::vector<int32_t> ids(static_cast<std::size_t>(rows * kT)), targets(ids.size());
  for (int64_t r = 0; r < rows; ++r) fill(first + r, ids.data() + r * kT, targets.data() + r * kT);
  nn::ModelActivations acts = model.make_activations(tracker, rows, kT);
  ps.zero_grads();
  Run out;
  out.loss = model.forward_backward(acts, ids.data(), targets.data(), rows, kT, dloss);
  const int El = cfg.n_experts / ctx.ep.size;
  for (int l = 0; l < cfg.n_layer; ++l) {
    const nn::MoeActivations& moe = *static_cast<const nn::LlamaBlockActivations&>(*acts.blocks[static_cast<std::size_t>(l)]).moe;
    out.experts.push_back(moe.experts);
    out.aux += moe.aux_sum, out.z += moe.z_sum;
    std::vector<int64_t> got(static_cast<std::size_t>(El), 0);
    for (int e = 0; e < El; ++e) {
      if (ctx.ep.size == 1) {
        got[static_cast<std::size_t>(e)] = moe.offsets[static_cast<std::size_t>(e + 1)] - moe.offsets[static_cast<std::size_t>(e)];
      } else {
        for (int s = 0; s < ctx.ep.size; ++s) got[static_cast<std::size_t>(e)] += moe.recv_counts[static_cast<std::size_t>(s * El + e)];
      }
    }
    out.recv_rows.push_back(std::move(got));
  }
  for (int id = 0; id < ps.size(); ++id) {
    out.grads[ps.info(id).name].assign(ps.grad(id), ps.grad(id) + ps.info(id).numel);
    out.expert_of[ps.info(id).name] = ps.info(id).expert;
  }
  return out;
}

// max |a - ref| over max |ref| (the per-tensor relative deviation).
double rel(const std::vector<float>& a, const std::vector<float>& ref) {
  double d = 0.0, m = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, static_cast<double>(std::fabs(a[i] - ref[i])));
    m = std::max(m, static_cast<double>(std::fabs(ref[i])));
  }
  return m > 0.0 ? d / m : d;
}
bool bitwise(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void check(int P, bool forced, kernels::Precision precision, bool deepseek = false) {
  kernels::set_num_threads(1);  // the ranks are the parallelism
  const nn::ModelConfig cfg = moe_shape(deepseek);
  const int K = cfg.n_experts_per_tok, El = cfg.n_experts / P;
  const float dloss = 1.0f / static_cast<float>(P * kB * kT);  // per token of the global batch
  const double bound = static_cast<double>(cfg.n_embd + P * kB * kT) / (1 << 24);  // see the file comment
  const Run whole = run({}, 0, P * kB, dloss, forced, precision, deepseek);
  std::vector<Run> slices;
  for (int q = 0; q < P; ++q) slices.push_back(run({}, q * kB, kB, dloss, forced, precision, deepseek));
  // The routing must exercise what the test is about: uneven loads, and (forced) idle experts.
  for (int l = 0; l < cfg.n_layer; ++l) {
    const std::vector<int64_t>& n = whole.recv_rows[static_cast<std::size_t>(l)];
    if (forced) {
      EXPECT_EQ(n, (std::vector<int64_t>{P * kB * kT, P * kB * kT, 0, 0})) << "layer " << l;
    } else {
      EXPECT_NE(*std::min_element(n.begin(), n.end()), *std::max_element(n.begin(), n.end())) << "layer " << l;
    }
  }
  comm::run_in_process(P, [&](comm::Communicator& launcher) {
    comm::Mesh mesh(launcher.split(0, launcher.rank(), "world"), comm::MeshShape{1, P, 1, P});
    CommExpertParallel ep(mesh.ep());
    nn::TpContext ctx;
    ctx.ep = make_ep_context(ep);
    const int q = mesh.coord(comm::kEp);
    const std::string what = fmt::format("ep {} rank {}{}{}", P, q, forced ? " forced routing" : "", deepseek ? " deepseek" : "");
    const Run got = run(ctx, q * kB, kB, dloss, forced, precision, deepseek);
    const Run& slice = slices[static_cast<std::size_t>(q)];
    EXPECT_NEAR(got.loss, slice.loss, bound * std::fabs(slice.loss)) << what;
    EXPECT_NEAR(got.aux, slice.aux, bound * std::fabs(slice.aux)) << what;
    EXPECT_NEAR(got.z, slice.z, bound * std::fabs(slice.z)) << what;
    const std::size_t n = static_cast<std::size_t>(kB * kT * K), off = static_cast<std::size_t>(q) * n;
    for (int l = 0; l < cfg.n_layer; ++l) {
      const std::vector<int32_t>& e = got.experts[static_cast<std::size_t>(l)];
      const std::vector<int32_t>& w = whole.experts[static_cast<std::size_t>(l)];
      EXPECT_TRUE(std::equal(e.begin(), e.end(), w.begin() + static_cast<std::ptrdiff_t>(off)) && e.size() == n)
          << what << " layer " << l << ": routing differs from one rank's";
      // The owner received every row of its experts from the whole batch.
      for (int j = 0; j < El; ++j) {
        EXPECT_EQ(got.recv_rows[static_cast<std::size_t>(l)][static_cast<std::size_t>(j)],
                  whole.recv_rows[static_cast<std::size_t>(l)][static_cast<std::size_t>(q * El + j)])
            << what << " layer " << l << " local expert " << j;
      }
    }
    int experts_held = 0;
    for (const auto& [name, g] : got.grads) {
      if (got.expert_of.at(name) >= 0) {
        ++experts_held;
        EXPECT_GE(got.expert_of.at(name), q * El) << name;
        EXPECT_LT(got.expert_of.at(name), (q + 1) * El) << name;
        const std::vector<float>& w = whole.grads.at(name);
        ASSERT_EQ(g.size(), w.size()) << name;
        if (precision == kernels::Precision::kBf16) {
          EXPECT_TRUE(bitwise(g, w)) << what << " expert gradient " << name << ": relative " << rel(g, w);
        } else {
          EXPECT_LE(rel(g, w), bound) << what << " expert gradient " << name;
        }
      } else {
        ASSERT_EQ(g.size(), slice.grads.at(name).size()) << name;
        EXPECT_LE(rel(g, slice.grads.at(name)), bound) << what << " dense gradient " << name;
      }
    }
    EXPECT_EQ(experts_held, cfg.n_layer * El * 3) << what;  // w1, w2, w3 per local expert
  }, test_options());
}

constexpr auto kFp32 = kernels::Precision::kFp32, kBf16 = kernels::Precision::kBf16;
TEST(InProcessExpertParallel, Ep2DispatchAndCombineMatchOneRank) { check(2, false, kFp32); }
TEST(InProcessExpertParallel, Ep4DispatchAndCombineMatchOneRank) { check(4, false, kFp32); }
TEST(InProcessExpertParallel, Ep2WithIdleExpertsMatchesOneRank) { check(2, true, kFp32); }
TEST(InProcessExpertParallel, Ep4WithIdleExpertsMatchesOneRank) { check(4, true, kFp32); }
TEST(InProcessExpertParallel, Bf16ExpertGradientsAreBitwiseOneRanksAtEp2) { check(2, false, kBf16); }
TEST(InProcessExpertParallel, Bf16ExpertGradientsAreBitwiseOneRanksAtEp4) { check(4, false, kBf16); }
TEST(InProcessExpertParallel, Bf16WithIdleExpertsIsBitwiseAtEp4) { check(4, true, kBf16); }
// DeepSeek-V3's sigmoid, group-limited router and moe_intermediate_size: layout-independent alike
// (forced: sigmoid(0) ties every expert and group, so group 0's experts 0 and 1 take every token).
TEST(InProcessExpertParallel, DeepSeekRouterAndWidthsEp2MatchOneRank) { check(2, false, kFp32, true); }
TEST(InProcessExpertParallel, DeepSeekRouterAndWidthsEp4MatchOneRank) { check(4, false, kFp32, true); }
TEST(InProcessExpertParallel, DeepSeekForcedRoutingEp4MatchesOneRank) { check(4, true, kFp32, true); }

}  // namespace
}  // namespace trident::parallel
