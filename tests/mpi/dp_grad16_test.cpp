// --grad-dtype bf16|fp16 (parallel/grad_shard.h): ZeRO 2-3's reduced gradient shard, and ZeRO
// 0-1's flat gradient buffer (Grad16Flat, below), stored in 16 bits, against fp32 storage of the
// same layout.
// ranks: 2
//
// What 16-bit storage changes: the shard element after micro-batch m is
// s_m = round(s_{m-1} + r_m) (s_0 = 0, r_m the micro-batch's reduced fp32 part), where fp32
// storage keeps s_m = s_{m-1} + r_m in fp32. So:
//   - one micro-batch with --grad-reduce-dtype bf16: r_1 is already a bf16 value (the bf16 sum
//     rounds it once), round(0 + r_1) = r_1, and bf16 storage holds exactly what fp32 storage
//     holds: losses, grad norms and weights are bitwise equal (GPT-2 and Llama, ZeRO 2 and 3);
//   - M micro-batches: each fold rounds once more, |s_M - S_M| <= M u sum_m |r_m| (u the
//     format's unit roundoff, 2^-8 bf16, 2^-11 fp16), i.e. M u relative when the micro-batches'
//     parts do not cancel. As in dp_bf16_reduce_test.cpp's derivation, with delta = M u: grad
//     norm at step k within k delta relative; loss equal at step 1, then AdamW's update moves by
//     at most 2 delta lr relative for a delta relative change of its gradient, so the loss moves
//     by at most sum over steps j < k of 2 delta lr sqrt(n) norm_j / loss_k relative.
// The runs with 2 micro-batches must differ from fp32 storage (the storage rounds). Memory: the
// tracker's gradients at rest are exactly 2 bytes a shard element. Also: layout independence
// (dp 2 against one process, the layout matrix's bf16 bounds widened by the folds), a pipeline's
// tied-embedding sum, fp16 (scaled) storage and its overflow, and what the engine refuses.
// Mutation tried by hand: the 16-bit shard not zeroed at begin_step fails the bitwise test at
// its first comparison. Not detectable here, by arithmetic: the order of the 16-bit sum of
// squares (a bf16 value's square has 16 significant bits, so over these tensors the double sums
// are exact in any order), and one rounding versus two in fold() with one micro-batch (r_1 is
// already bf16). The fold's single rounding is tests/unit/grad_shard_test's.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "comm/mesh.h"
#include "comm/mpi_backend.h"
#include "core/check.h"
#include "nn/model_config.h"
#include "parallel/engine.h"
#include "mpi_gtest_main.h"
#include "replica_check.h"
#include "synthetic_batch.h"

namespace trident::parallel {
namespace {

constexpr int kSteps = 5;
constexpr int64_t kBatch = 8, kSeq = 16;
constexpr float kLr = 1e-3f;

}  // namespace

std::unique_ptr<comm::Mesh> g_mesh, g_self_mesh, g_pp_mesh, g_ep_mesh, g_tp_mesh;  // released before MPI_Finalize (main)

namespace {

comm::Mesh& dp_mesh() {
  if (!g_mesh) {
    int n = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    g_mesh = std::make_unique<comm::Mesh>(comm::make_mpi_communicator(MPI_COMM_WORLD, "world", test::aborting_after(60.0)),
                                          comm::MeshShape{1, n, 1});
  }
  return *g_mesh;
}

comm::Mesh& self_mesh() {
  if (!g_self_mesh) {
    g_self_mesh = std::make_unique<comm::Mesh>(comm::make_mpi_communicator(MPI_COMM_SELF, "world", test::aborting_after(60.0)),
                                               comm::MeshShape{1, 1, 1});
  }
  return *g_self_mesh;
}

comm::Mesh& pp_mesh() {  // pp 2 x dp 1
  if (!g_pp_mesh) {
    g_pp_mesh = std::make_unique<comm::Mesh>(comm::make_mpi_communicator(MPI_COMM_WORLD, "world", test::aborting_after(60.0)),
                                             comm::MeshShape{2, 1, 1});
  }
  return *g_pp_mesh;
}

comm::Mesh& ep_mesh() {  // dp 2 = ep 2 (edp 1)
  if (!g_ep_mesh) {
    g_ep_mesh = std::make_unique<comm::Mesh>(comm::make_mpi_communicator(MPI_COMM_WORLD, "world", test::aborting_after(60.0)),
                                             comm::MeshShape{1, 2, 1, 2});
  }
  return *g_ep_mesh;
}

comm::Mesh& tp_mesh() {  // tp 2, dp 1
  if (!g_tp_mesh) {
    g_tp_mesh = std::make_unique<comm::Mesh>(comm::make_mpi_communicator(MPI_COMM_WORLD, "world", test::aborting_after(60.0)),
                                             comm::MeshShape{1, 1, 2});
  }
  return *g_tp_mesh;
}

struct Curves {
  std::vector<double> losses, norms;
  std::vector<int> skipped;
  std::map<std::string, std::vector<float>> weights;
  int64_t numel = 0;
  double grad_bytes = 0, shard = 0;  // the tracker's gradients at rest, this rank's shard elements
};

EngineOptions options(int zero, kernels::Precision precision, GradDType grad, GradReduceDType reduce) {
  EngineOptions o;
  o.zero = zero;
  o.precision = precision;
  o.grad_dtype = grad;
  o.grad_reduce_dtype = reduce;
  o.bucket_mb = 0.02;  // several buckets
  o.grad_clip = 1.0;
  o.adamw.eps = 1e-6f;
  o.loss_scaler.initial_scale = 4096.0;  // fp16: no step overflows at this scale (checked)
  return o;
}

Curves train(comm::Mesh& mesh, const std::string& model, const EngineOptions& opt, int micro) {
  MemoryTracker tracker;
  nn::ModelConfig cfg = nn::model_preset(model == "llama-untied" ? "llama-tiny" : model);
  if (model == "llama-untied") cfg.tie_word_embeddings = false;
  Engine e(mesh, cfg, opt, tracker, kBatch, kSeq, micro);
  e.initialize(1234);
  Curves r;
  for (int s = 0; s < kSteps; ++s) {
    const StepStats st = e.train_step(test::synthetic_batch(s, e.config().vocab_size, kSeq), kLr);
    r.losses.push_back(st.loss);
    r.norms.push_back(st.grad_norm);
    r.skipped.push_back(st.skipped ? 1 : 0);
  }
  r.grad_bytes = static_cast<double>(tracker.current(MemCategory::kGradients));
  // The elements at rest: ZeRO 2-3's shard, ZeRO 0-1's flat gradient buffer (the trained ones).
  r.shard = static_cast<double>(opt.zero >= 2 ? e.data_parallel()->layout().numel() : e.model().params().grad_numel());
  if (mesh.edp().size() == mesh.dp().size()) {  // under ep the dp ranks hold different experts: no replicas
    const test::ReplicaMismatch rm = test::compare_dp_replicas(e);
    EXPECT_EQ(rm.elements, 0) << "dp replicas differ, first " << rm.first;
  }
  // The weights of every parameter (all ranks take part in each gather: with pp > 1 a stage holds
  // only its own parameters, so pipelines compare losses and norms only).
  r.numel = e.config().num_parameters();  // the logical elements (the bound's n)
  if (mesh.pp().size() > 1) return r;
  for (const nn::ParamInfo& p : e.model().params().infos()) {
    std::vector<float> v(static_cast<std::size_t>(shape_numel(p.logical_shape)));
    e.gather_param(p.name, p.logical_shape, v.data());
    r.weights[p.name] = std::move(v);
  }
  return r;
}

Curves train(const std::string& model, const EngineOptions& opt, int micro) { return train(dp_mesh(), model, opt, micro); }

std::string label(const std::string& model, int zero, int micro) {
  return model + " zero " + std::to_string(zero) + " micro " + std::to_string(micro);
}

// The header's bound with delta = M u; returns the largest fractions of the loss and norm bounds used.
// `first_loss`: the relative difference the first loss may have (0: equal, as when only the
// stored gradients differ; a layout reorders the loss sum itself).
std::pair<double, double> expect_within_bound(const Curves& got, const Curves& want, double delta, const std::string& what,
                                              double first_loss = 0.0) {
  if (first_loss == 0.0) {
    EXPECT_EQ(got.losses[0], want.losses[0]) << what << ": the first loss comes before any update";
  }
  double used_loss = 0, used_norm = 0, drift = first_loss * want.losses[0];
  for (std::size_t s = 0; s < want.losses.size(); ++s) {
    const double k = static_cast<double>(s + 1);
    const double norm_b = k * delta;
    const double dn = std::fabs(got.norms[s] - want.norms[s]) / want.norms[s];
    EXPECT_LE(dn, norm_b) << what << " step " << k;
    used_norm = std::max(used_norm, dn / norm_b);
    if (s > 0 || first_loss > 0.0) {
      const double loss_b = drift / want.losses[s];
      const double dl = std::fabs(got.losses[s] - want.losses[s]) / want.losses[s];
      EXPECT_LE(dl, loss_b) << what << " step " << k;
      used_loss = std::max(used_loss, dl / loss_b);
    }
    drift += 2 * delta * kLr * std::sqrt(static_cast<double>(want.numel)) * want.norms[s];
  }
  return {used_loss, used_norm};
}

struct Case {
  std::string model;
  int zero;
};

class Grad16 : public testing::TestWithParam<Case> {};

TEST_P(Grad16, OneMicroBatchOfBf16SumsIsBitwiseFp32Storage) {
  const Case c = GetParam();
  const auto bf16 = kernels::Precision::kBf16;
  const Curves f = train(c.model, options(c.zero, bf16, GradDType::kFp32, GradReduceDType::kBf16), 1);
  const Curves h = train(c.model, options(c.zero, bf16, GradDType::kBf16, GradReduceDType::kBf16), 1);
  const std::string what = label(c.model, c.zero, 1);
  EXPECT_EQ(h.losses, f.losses) << what;
  EXPECT_EQ(h.norms, f.norms) << what;
  if (dp_mesh().rank() == 0) {
    EXPECT_TRUE(h.weights == f.weights) << what << ": weights differ";
  }
  // At rest (after the step: the buckets freed) the gradients are the shard alone.
  EXPECT_EQ(f.grad_bytes, 4 * f.shard) << what;
  EXPECT_EQ(h.grad_bytes, 2 * h.shard) << what;
}

TEST_P(Grad16, MicroBatchesTrackFp32StorageWithinTheBoundAndDiffer) {
  const Case c = GetParam();
  constexpr int kMicro = 2;
  const auto bf16 = kernels::Precision::kBf16;
  for (GradReduceDType reduce : {GradReduceDType::kBf16, GradReduceDType::kFp32}) {
    const Curves f = train(c.model, options(c.zero, bf16, GradDType::kFp32, reduce), kMicro);
    const Curves h = train(c.model, options(c.zero, bf16, GradDType::kBf16, reduce), kMicro);
    const std::string what = label(c.model, c.zero, kMicro) + (reduce == GradReduceDType::kBf16 ? " bf16 sums" : " fp32 sums");
    const auto [used_loss, used_norm] = expect_within_bound(h, f, kMicro / 256.0, what);
    EXPECT_NE(h.norms, f.norms) << what << ": 16-bit storage equal to fp32 (did it round?)";
    if (dp_mesh().rank() == 0) {
      std::printf("[%s] bf16 vs fp32 gradients at rest: loss dev <= %.3f of bound, grad norm dev <= %.3f of bound\n",
                  what.c_str(), used_loss, used_norm);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dp, Grad16,
                         testing::Values(Case{"tiny", 2}, Case{"tiny", 3}, Case{"llama-tiny", 2}, Case{"llama-tiny", 3}),
                         [](const testing::TestParamInfo<Case>& i) {
                           std::string m = i.param.model == "tiny" ? "gpt2" : "llama";
                           return m + "_zero" + std::to_string(i.param.zero);
                         });

// ZeRO 0-1 (the flat gradient buffer 16-bit, each layer group's fp32 working buffer folded
// into it when the group is final, the bucket's sum widened, summed, rounded back once). With one
// micro-batch and bf16 sums: the fold rounds the rank's own gradient to bf16, which is what the
// bf16 sum rounds it to anyway, and the sum is bf16, so an untied model is bitwise fp32 storage.
// A tied embedding's two parts (the head's, reduced early, and the embedding's rows, added after)
// are added in fp32 by fp32 storage but rounded once more by 16-bit storage: there, and with 2
// micro-batches, delta = (M + 2) u (M folds, the sum's rounding, the tied rows' rounding).
TEST(Grad16Flat, UntiedOneMicroBatchOfBf16SumsIsBitwiseFp32Storage) {
  const auto bf16 = kernels::Precision::kBf16;
  for (int zero : {0, 1}) {
    const Curves f = train("llama-untied", options(zero, bf16, GradDType::kFp32, GradReduceDType::kBf16), 1);
    const Curves h = train("llama-untied", options(zero, bf16, GradDType::kBf16, GradReduceDType::kBf16), 1);
    const std::string what = label("llama-untied", zero, 1);
    EXPECT_EQ(h.losses, f.losses) << what;
    EXPECT_EQ(h.norms, f.norms) << what;
    if (dp_mesh().rank() == 0) {
      EXPECT_TRUE(h.weights == f.weights) << what << ": weights differ";
    }
    EXPECT_EQ(f.grad_bytes, 4 * f.shard) << what;
    EXPECT_EQ(h.grad_bytes, 2 * h.shard) << what;  // at rest: the 16-bit flat buffer alone
  }
}

TEST(Grad16Flat, TiedAndMicroBatchesTrackFp32StorageWithinTheBoundAndDiffer) {
  const auto bf16 = kernels::Precision::kBf16;
  for (const char* model : {"tiny", "llama-untied"}) {
    for (int zero : {0, 1}) {
      for (int micro : {1, 2}) {
        for (GradReduceDType reduce : {GradReduceDType::kBf16, GradReduceDType::kFp32}) {
          if (std::string(model) == "llama-untied" && micro == 1 && reduce == GradReduceDType::kBf16) continue;  // bitwise above
          const Curves f = train(model, options(zero, bf16, GradDType::kFp32, reduce), micro);
          const Curves h = train(model, options(zero, bf16, GradDType::kBf16, reduce), micro);
          const std::string what =
              label(model, zero, micro) + (reduce == GradReduceDType::kBf16 ? " bf16 sums" : " fp32 sums");
          const auto [used_loss, used_norm] = expect_within_bound(h, f, (micro + 2) / 256.0, what);
          EXPECT_NE(h.norms, f.norms) << what << ": 16-bit storage equal to fp32 (did it round?)";
          if (dp_mesh().rank() == 0) {
            std::printf("[%s] 16-bit flat gradients: loss dev <= %.3f of bound, grad norm dev <= %.3f of bound\n",
                        what.c_str(), used_loss, used_norm);
          }
        }
      }
    }
  }
}

// Every trained tensor gets its gradient through the working buffers (a tensor whose pointer a
// group left null would silently get none: layers skip a null gradient, as for frozen weights):
// after one step the 16-bit flat gradient of each tensor against fp32 storage's, relative
// Frobenius distance. A dropped or doubled contribution of a micro-batch or a group shows as
// >= 0.5; rounding as about (M + 2) u = 0.016 (times the tensor's cancellation, sum |parts| / |sum|).
// Run at dp 2 (ZeRO 0 and 1) and at tp 2 (with and without sequence parallelism: the norms' tp
// sums), each rank comparing its own slices.
TEST(Grad16Flat, EveryTensorGetsItsGradient) {
  const auto bf16 = kernels::Precision::kBf16;
  struct Layout {
    comm::Mesh* mesh;
    int zero;
    bool sp;
    std::string name;
  };
  std::vector<Layout> layouts{{&dp_mesh(), 0, false, "dp2 zero 0"}, {&dp_mesh(), 1, false, "dp2 zero 1"}};
  if (dp_mesh().size() == 2) {
    layouts.push_back({&tp_mesh(), 0, false, "tp2"});
    layouts.push_back({&tp_mesh(), 0, true, "tp2 sp"});
  }
  for (const Layout& lay : layouts) {
    const int zero = lay.zero;
    std::vector<std::vector<float>> g[2];
    for (int k = 0; k < 2; ++k) {
      MemoryTracker t;
      EngineOptions o = options(zero, bf16, k ? GradDType::kBf16 : GradDType::kFp32, GradReduceDType::kFp32);
      o.sequence_parallel = lay.sp;
      Engine e(*lay.mesh, nn::model_preset("tiny"), o, t, kBatch, kSeq, 2);
      e.initialize(1234);
      e.train_step(test::synthetic_batch(0, e.config().vocab_size, kSeq), kLr);
      const nn::ParameterSet& ps = e.model().params();
      const GradShard* g16 = e.data_parallel() ? e.data_parallel()->flat_grads16() : nullptr;
      ASSERT_EQ(g16 != nullptr, k == 1);
      for (int id = 0; id < ps.size(); ++id) {
        std::vector<float> v(static_cast<std::size_t>(ps.info(id).numel));
        if (g16) {
          g16->read(ps.info(id).grad_offset, ps.info(id).numel, v.data());
        } else {
          std::copy_n(ps.grad(id), v.size(), v.begin());
        }
        g[k].push_back(std::move(v));
      }
    }
    double worst = 0;
    for (std::size_t id = 0; id < g[0].size(); ++id) {
      double d = 0, n = 0;
      for (std::size_t i = 0; i < g[0][id].size(); ++i) {
        d += std::pow(static_cast<double>(g[1][id][i]) - g[0][id][i], 2);
        n += std::pow(static_cast<double>(g[0][id][i]), 2);
      }
      ASSERT_GT(n, 0.0) << "tensor " << id << " has no gradient in fp32 either";
      const double rel = std::sqrt(d / n);
      EXPECT_LT(rel, 0.5) << lay.name << " tensor " << id << ": its gradient is missing or doubled";
      worst = std::max(worst, rel);
    }
    if (dp_mesh().rank() == 0) std::printf("[tiny %s] per-tensor relative gradient distance <= %.4f\n", lay.name.c_str(), worst);
  }
}

// Tensor parallelism (tp 2, one dp rank, ZeRO 0: the reducer exists for the 16-bit store alone;
// the norm gains' and replicated parameters' tp sums happen inside their group's backward, so in
// its working buffer), with and without sequence parallelism: against fp32 storage within
// delta = (M + 2) u.
TEST(Grad16Flat, TensorParallelTracksFp32StorageWithinTheBound) {
  if (dp_mesh().size() != 2) GTEST_SKIP() << "tp 2 needs 2 ranks";
  constexpr int kMicro = 2;
  const auto bf16 = kernels::Precision::kBf16;
  for (const char* model : {"tiny", "llama-tiny"}) {
    for (bool sp : {false, true}) {
      EngineOptions f = options(0, bf16, GradDType::kFp32, GradReduceDType::kFp32);
      EngineOptions h = options(0, bf16, GradDType::kBf16, GradReduceDType::kFp32);
      f.sequence_parallel = h.sequence_parallel = sp;
      const Curves cf = train(tp_mesh(), model, f, kMicro);
      const Curves ch = train(tp_mesh(), model, h, kMicro);
      const std::string what = std::string(model) + " tp2" + (sp ? " sp" : "") + " zero 0 micro 2";
      const auto [used_loss, used_norm] = expect_within_bound(ch, cf, (kMicro + 2) / 256.0, what);
      EXPECT_NE(ch.norms, cf.norms) << what;
      EXPECT_EQ(ch.grad_bytes, 2 * ch.shard) << what;
      if (dp_mesh().rank() == 0) {
        std::printf("[%s] 16-bit flat gradients: loss dev <= %.3f of bound, grad norm dev <= %.3f of bound\n",
                    what.c_str(), used_loss, used_norm);
      }
    }
  }
}

// Layout independence with 16-bit gradients: dp 2 at ZeRO 0-3 against one process at ZeRO 2
// (every micro-batch of 2 rows: 4 micro-batches there, 2 per dp rank here). Besides the fp32 reordering a layout
// causes (eta = 2^-24 sqrt(B T) relative), each of a run's M folds rounds once (u = 2^-8) and a
// reordered bf16 matmul operand can cross a rounding boundary and move by a whole bf16 step s =
// 2^-7 (tests/cli/equivalence.py, bf16_step_factor: the layout matrix's bf16 bound). So delta =
// s + (M_one + M_dp) u relative per step for the grad norm (ZeRO 0-1: 2u more, the dp sum's and
// the tied rows' roundings), the loss drift from it as above, and the first loss within the
// layout matrix's bf16 loss bound: 2^-24 sqrt(V / (B T)) x sqrt(s / eta).
TEST(Grad16Layout, DpTwoTracksOneProcessWithinTheBf16Bounds) {
  const auto bf16 = kernels::Precision::kBf16;
  const double u = 1.0 / 256, s = 1.0 / 128, bt = static_cast<double>(kBatch * kSeq), v = 1000;
  const double eta = std::ldexp(1.0, -24) * std::sqrt(bt);
  const double first = std::ldexp(1.0, -24) * std::sqrt(v / bt) * std::sqrt(s / eta);
  for (const char* model : {"tiny", "llama-tiny"}) {
    const Curves one = train(self_mesh(), model, options(2, bf16, GradDType::kBf16, GradReduceDType::kFp32), 4);
    for (int zero : {0, 1, 2, 3}) {
      const Curves dp = train(model, options(zero, bf16, GradDType::kBf16, GradReduceDType::kFp32), 2);
      const std::string what = std::string(model) + " dp2 zero " + std::to_string(zero) + " vs one process";
      const auto [used_loss, used_norm] = expect_within_bound(dp, one, s + (4 + 2 + (zero < 2 ? 2 : 0)) * u, what, first);
      if (dp_mesh().rank() == 0) {
        std::printf("[%s] bf16 gradients: loss dev <= %.3f of bound, grad norm dev <= %.3f of bound\n", what.c_str(),
                    used_loss, used_norm);
      }
    }
  }
}

// Pipeline (pp 2, dp 1, ZeRO 2, 2 micro-batches): the reducer sees the step as one micro-batch
// (one fold, fp32 in the buckets before it), then sum_tied_grads adds the two stages' parts of
// the tied embedding in fp32 and rounds once: two roundings, delta = 2u, against fp32 storage.
TEST(Grad16Pipeline, TiedEmbeddingSumTracksFp32StorageWithinTheBound) {
  if (dp_mesh().size() != 2) GTEST_SKIP() << "pp 2 needs 2 ranks";
  const auto bf16 = kernels::Precision::kBf16;
  EngineOptions f = options(2, bf16, GradDType::kFp32, GradReduceDType::kFp32);
  EngineOptions h = options(2, bf16, GradDType::kBf16, GradReduceDType::kFp32);
  const Curves cf = train(pp_mesh(), "tiny", f, 2);
  const Curves ch = train(pp_mesh(), "tiny", h, 2);
  const auto [used_loss, used_norm] = expect_within_bound(ch, cf, 2.0 / 256, "pp2 zero 2");
  EXPECT_NE(ch.norms, cf.norms) << "pp2: 16-bit storage equal to fp32 (did it round?)";
  EXPECT_EQ(ch.grad_bytes, 2 * ch.shard);
  if (pp_mesh().rank() == 0) {
    std::printf("[pp2 zero 2] bf16 vs fp32 gradients at rest: loss dev <= %.3f of bound, grad norm dev <= %.3f of bound\n",
                used_loss, used_norm);
  }
}

// Expert parallelism (mixtral-tiny, dp 2 = ep 2: the experts' gradients summed over edp, here one
// rank, the dense ones over dp; at ZeRO 0-1 the bucket's split sums run on its fp32 wire buffer):
// against fp32 storage within the bounds above (delta = (M + 2) u at ZeRO 0-1, M u at 2-3).
TEST(Grad16Experts, EpTwoTracksFp32StorageWithinTheBound) {
  if (dp_mesh().size() != 2) GTEST_SKIP() << "dp 2 x ep 2 needs 2 ranks";
  constexpr int kMicro = 2;
  const auto bf16 = kernels::Precision::kBf16;
  for (int zero : {0, 2}) {
    const Curves f = train(ep_mesh(), "mixtral-tiny", options(zero, bf16, GradDType::kFp32, GradReduceDType::kFp32), kMicro);
    const Curves h = train(ep_mesh(), "mixtral-tiny", options(zero, bf16, GradDType::kBf16, GradReduceDType::kFp32), kMicro);
    const std::string what = label("mixtral-tiny ep 2", zero, kMicro);
    const auto [used_loss, used_norm] = expect_within_bound(h, f, (zero >= 2 ? kMicro : kMicro + 2) / 256.0, what);
    EXPECT_NE(h.norms, f.norms) << what;
    EXPECT_EQ(h.grad_bytes, 2 * h.shard) << what;
    if (dp_mesh().rank() == 0) {
      std::printf("[%s] bf16 vs fp32 gradients at rest: loss dev <= %.3f of bound, grad norm dev <= %.3f of bound\n",
                  what.c_str(), used_loss, used_norm);
    }
  }
}

// fp16 gradients are stored scaled (by 4096 here: no step overflows, checked): the same bound
// with fp16's u = 2^-11, against fp32 storage of the same fp16 run (ZeRO 0-1: delta = (M + 2) u
// as for bf16 there, the dp sum fp32 then rounded to fp16 once).
TEST(Grad16Fp16, TracksFp32StorageWithinTheFp16Bound) {
  constexpr int kMicro = 2;
  const auto fp16 = kernels::Precision::kFp16;
  for (int zero : {0, 1, 2, 3}) {
    const Curves f = train("tiny", options(zero, fp16, GradDType::kFp32, GradReduceDType::kFp32), kMicro);
    const Curves h = train("tiny", options(zero, fp16, GradDType::kFp16, GradReduceDType::kFp32), kMicro);
    const std::string what = label("tiny", zero, kMicro) + " fp16";
    EXPECT_EQ(f.skipped, std::vector<int>(kSteps, 0)) << what;
    EXPECT_EQ(h.skipped, std::vector<int>(kSteps, 0)) << what;
    const auto [used_loss, used_norm] = expect_within_bound(h, f, (zero >= 2 ? kMicro : kMicro + 2) / 2048.0, what);
    EXPECT_NE(h.norms, f.norms) << what;
    EXPECT_EQ(h.grad_bytes, 2 * h.shard) << what;
    if (dp_mesh().rank() == 0) {
      std::printf("[%s] fp16 vs fp32 gradients at rest: loss dev <= %.3f of bound, grad norm dev <= %.3f of bound\n",
                  what.c_str(), used_loss, used_norm);
    }
  }
}

// A scale at which fp16 overflows (2^100: the backward's fp16 operands and the stored fp16
// gradients are inf): the step is skipped on every rank, the scaler backs off (hysteresis 1:
// every skip), and training goes on once the scale fits (a step applied, finite).
TEST(Grad16Fp16, AnOverflowingStoreIsSkippedAndRecovers) {
  for (int zero : {0, 2}) {
    EngineOptions o = options(zero, kernels::Precision::kFp16, GradDType::kFp16, GradReduceDType::kFp32);
    o.loss_scaler.initial_scale = std::ldexp(1.0, 100);
    o.loss_scaler.hysteresis = 1;
    MemoryTracker tracker;
    Engine e(dp_mesh(), nn::model_preset("tiny"), o, tracker, kBatch, kSeq, 2);
    e.initialize(1234);
    const StepStats first = e.train_step(test::synthetic_batch(0, e.config().vocab_size, kSeq), kLr);
    EXPECT_TRUE(first.skipped);
    EXPECT_TRUE(first.overflow);
    bool applied = false;
    for (int s = 1; s < 120 && !applied; ++s) {
      const StepStats st = e.train_step(test::synthetic_batch(s, e.config().vocab_size, kSeq), kLr);
      applied = !st.skipped;
      if (applied) {
        EXPECT_TRUE(std::isfinite(st.loss) && std::isfinite(st.grad_norm));
        EXPECT_LT(st.loss_scale, o.loss_scaler.initial_scale) << "the scaler backed off";
      }
    }
    EXPECT_TRUE(applied) << "zero " << zero << ": the scaler never backed off far enough";
    EXPECT_EQ(e.optimizer_step(), 1) << "zero " << zero;
  }
}

// What the engine refuses, each with the flags named.
TEST(Grad16BadInput, MismatchedPrecisionIsAClearError) {
  auto error_of = [](const EngineOptions& o) -> std::string {
    MemoryTracker t;
    try {
      Engine e(dp_mesh(), nn::model_preset("tiny"), o, t, kBatch, kSeq, 1);
    } catch (const Error& err) {
      return err.what();
    }
    return "";
  };
  const std::string p = error_of(options(2, kernels::Precision::kFp32, GradDType::kBf16, GradReduceDType::kFp32));
  EXPECT_NE(p.find("--grad-dtype bf16"), std::string::npos) << p;
  EXPECT_NE(p.find("--precision bf16"), std::string::npos) << p;
  const std::string q = error_of(options(2, kernels::Precision::kBf16, GradDType::kFp16, GradReduceDType::kFp32));
  EXPECT_NE(q.find("--precision fp16"), std::string::npos) << q;
}

// ZeRO 0-1 with 16-bit gradients under a pipeline: refused, naming the way out.
TEST(Grad16BadInput, FlatSixteenBitGradientsUnderAPipelineAreAClearError) {
  if (dp_mesh().size() != 2) GTEST_SKIP() << "pp 2 needs 2 ranks";
  MemoryTracker t;
  std::string what;
  try {
    Engine e(pp_mesh(), nn::model_preset("tiny"), options(1, kernels::Precision::kBf16, GradDType::kBf16, GradReduceDType::kFp32),
             t, kBatch, kSeq, 2);
  } catch (const Error& err) {
    what = err.what();
  }
  EXPECT_NE(what.find("--grad-dtype bf16 at --zero 1 with --pp 2"), std::string::npos) << what;
  EXPECT_NE(what.find("--zero 2 or 3"), std::string::npos) << what;
}

}  // namespace
}  // namespace trident::parallel

int main(int argc, char** argv) {
  return trident::test::run_tests_on_every_rank(argc, argv, {}, [] {
    trident::parallel::g_tp_mesh.reset();
    trident::parallel::g_ep_mesh.reset();
    trident::parallel::g_pp_mesh.reset();
    trident::parallel::g_self_mesh.reset();
    trident::parallel::g_mesh.reset();
  });
}
