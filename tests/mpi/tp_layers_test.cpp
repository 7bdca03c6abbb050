// Tensor parallelism against the unsharded model: every rank builds the tp = 1 model itself and
// the tp = world-size model, runs both on the same inputs and compares outputs, input
// gradients and parameter gradients (each rank checks its slice of the logical gradient, so the
// union over ranks covers every element). Pieces: block, embedding, head + vocab-parallel loss
// (vocabularies not divisible by tp, a rank without real vocabulary columns, ignored targets),
// the whole GPT, each with and without sequence parallelism; also initial-weight slices,
// generation logits and the bad-input errors.
//
// Tolerance: both sides are fp32 with the same kernels; only the association of sums differs
// (the row-parallel layers sum tp partial matmuls, the loss sums tp partial sum-exps). Each
// output is a sum of at most 4C = 128 products (or V = 1003 exps), so reassociation changes it
// by a few ulp of the magnitudes summed: ~1e-6 of the tensor's scale through two layers. We
// require max|tp - ref| <= 2e-5 * max|ref| per tensor (and 1e-5 relative for the loss), a
// margin of ~10x that still catches any wrong slice, missing reduction or double-counted bias
// (those are O(1) relative errors).
// ranks: 2 4
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <vector>

#include "comm/mesh.h"
#include "comm/mpi_backend.h"
#include "comm/runtime.h"
#include "core/check.h"
#include "core/rng.h"
#include "kernels/kernels.h"
#include "nn/architecture.h"
#include "nn/model.h"
#include "parallel/tensor_parallel_comm.h"
#include "mpi_gtest_main.h"

namespace trident {
namespace {

comm::Mesh* g_mesh = nullptr;
std::unique_ptr<parallel::CommTensorParallel> g_tp;

nn::TpContext tp_ctx(bool sp) { return parallel::make_tp_context(*g_tp, sp); }
int tp_size() { return g_tp->size(); }
int tp_rank() { return g_tp->rank(); }

std::vector<float> randn(uint64_t stream, int64_t n, float scale = 1.0f) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = scale * normal_at(1234, stream, static_cast<uint64_t>(i));
  return v;
}

// max|got - want| <= rel * max|want| (+ a floor for all-zero tensors).
void expect_close(const std::string& what, const float* got, const float* want, int64_t n,
                  double rel = 2e-5) {
  double scale = 0.0, err = 0.0;
  int64_t worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    scale = std::max(scale, static_cast<double>(std::fabs(want[i])));
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (e > err) err = e, worst = i;
  }
  EXPECT_LE(err, rel * scale + 1e-12)
      << what << ": max error " << err << " at " << worst << " (got " << (n ? got[worst] : 0)
      << ", want " << (n ? want[worst] : 0) << "), scale " << scale << " [tp rank " << tp_rank()
      << " of " << tp_size() << "]";
}

// Compares every parameter's gradient on this rank with its slice of the reference gradient.
void expect_grads_match(const nn::ParameterSet& tp, const nn::ParameterSet& ref) {
  for (const nn::ParamInfo& info : tp.infos()) {
    const int rid = ref.find(info.name);
    ASSERT_GE(rid, 0) << info.name;
    const nn::ParamInfo& rinfo = ref.info(rid);
    std::vector<float> logical(static_cast<std::size_t>(shape_numel(rinfo.logical_shape)));
    nn::gather_local_to_logical(rinfo, ref.grad(rid), logical.data());
    std::vector<float> want(static_cast<std::size_t>(info.numel));
    nn::scatter_logical_to_local(info, logical.data(), want.data());
    expect_close("grad " + info.name, tp.grad(tp.find(info.name)), want.data(), info.numel);
  }
}

// Larger-than-GPT-2 weights so every path carries signal well above rounding.
void init_params(nn::ParameterSet& ps) {
  ps.initialize(7);
  for (std::size_t i = 0; i < ps.values().size(); ++i) ps.values()[i] *= 3.0f;
  // Constant-initialised tensors (biases 0, norms 1) get a perturbation keyed by the logical
  // index, identical on every layout, so a bias that is dropped or added twice shows.
  for (int id = 0; id < ps.size(); ++id) {
    const nn::ParamInfo& info = ps.info(id);
    if (info.init_std > 0.0f) continue;
    float* v = ps.data(id);
    nn::for_each_local_element(info, [&](int64_t l, int64_t g) {
      if (g >= 0) v[l] += 0.1f * std::sin(0.37f * static_cast<float>(g) + static_cast<float>(info.name.size()));
    });
  }
}

nn::ModelConfig small_config(int vocab = 1003) {
  nn::ModelConfig c;
  c.n_layer = 2, c.n_head = 4, c.n_embd = 32, c.n_positions = 16, c.vocab_size = vocab;
  c.vocab_pad_multiple = 8;
  return c;
}

// Llama: 8 query heads of 4 channels on 2 key/value heads, MLP width 72 (not a multiple of C).
nn::ModelConfig llama_config(bool tied) {
  nn::ModelConfig c = small_config();
  c.family = nn::Family::kLlama;
  c.n_head = 8, c.n_kv_head = 2, c.n_inner = 72, c.tie_word_embeddings = tied;
  return c;
}

// ---------------------------------------------------------------- initial weights
TEST(TensorParallel, InitialSlicesEqualTheUnshardedModel) {
  for (bool sp : {false, true}) {
    nn::ModelConfig cfg = small_config();
    MemoryTracker tracker;
    nn::Model ref(cfg), tp(cfg, tp_ctx(sp));
    ref.allocate(tracker), tp.allocate(tracker);
    ref.params().initialize(42), tp.params().initialize(42);
    EXPECT_EQ(tp.padded_vocab_local(), cfg.padded_vocab(tp_size()) / tp_size());
    for (const nn::ParamInfo& info : tp.params().infos()) {
      const int rid = ref.params().find(info.name);
      const nn::ParamInfo& rinfo = ref.params().info(rid);
      std::vector<float> logical(static_cast<std::size_t>(shape_numel(rinfo.logical_shape)));
      nn::gather_local_to_logical(rinfo, ref.params().data(rid), logical.data());
      std::vector<float> want(static_cast<std::size_t>(info.numel));
      nn::scatter_logical_to_local(info, logical.data(), want.data());
      const float* got = tp.params().data(tp.params().find(info.name));
      for (int64_t i = 0; i < info.numel; ++i) {
        ASSERT_EQ(got[i], want[static_cast<std::size_t>(i)]) << info.name << " element " << i;
      }
    }
  }
}

// ---------------------------------------------------------------- block
void check_block(const nn::ModelConfig& cfg, bool sp) {
  SCOPED_TRACE(fmt::format("{} {}", nn::family_name(cfg.family), sp ? "sequence parallel" : "tensor parallel"));
  const int64_t B = 2, T = 7, N = B * T, C = cfg.n_embd;  // N = 14: ragged split at tp 4
  const nn::Architecture& arch = nn::architecture(cfg.family);
  MemoryTracker tracker;
  nn::ParameterSet rps, tps;
  rps.begin_group("layer.0"), tps.begin_group("layer.0");
  const nn::TpContext ctx = tp_ctx(sp);
  const auto rblock = arch.make_layer(rps, cfg, nn::TpContext{}, 0);
  const auto tblock = arch.make_layer(tps, cfg, ctx, 0);
  rps.allocate(tracker), tps.allocate(tracker);
  init_params(rps), init_params(tps);

  const std::vector<float> x = randn(1, N * C), dout = randn(2, N * C);
  const auto racts = rblock->make_activations(tracker, B, T, -1, true, kernels::Precision::kFp32);
  nn::SharedScratch rscratch(tracker, N, C, arch.layer_scratch_floats(cfg, 1, N, 0));
  std::vector<float> rout(static_cast<std::size_t>(N * C)), rdx = dout;
  rblock->forward(rps, *racts, rout.data(), x.data(), B, T, rscratch);
  // Backward twice: the second accumulates into non-zero gradients, as micro-batches do.
  rblock->backward(rps, *racts, rscratch, rdx.data(), x.data(), B, T);
  rdx = dout;
  rblock->backward(rps, *racts, rscratch, rdx.data(), x.data(), B, T);

  const nn::RowSplit rows = sp ? ctx.rows(N) : nn::RowSplit{0, N, {}};
  const int64_t Nl = rows.count, off = rows.begin * C;
  const auto tacts = tblock->make_activations(tracker, B, T, sp ? Nl : -1, true, kernels::Precision::kFp32);
  nn::SharedScratch tscratch(tracker, N, C, arch.layer_scratch_floats(cfg, tp_size(), N, 0), sp ? Nl : -1);
  std::vector<float> tx(x.begin() + off, x.begin() + off + Nl * C);
  std::vector<float> tout(static_cast<std::size_t>(Nl * C));
  std::vector<float> tdx(dout.begin() + off, dout.begin() + off + Nl * C);
  tblock->forward(tps, *tacts, tout.data(), tx.data(), B, T, tscratch);
  tblock->backward(tps, *tacts, tscratch, tdx.data(), tx.data(), B, T);
  tdx.assign(dout.begin() + off, dout.begin() + off + Nl * C);
  tblock->backward(tps, *tacts, tscratch, tdx.data(), tx.data(), B, T);
  expect_close("block output", tout.data(), rout.data() + off, Nl * C);
  expect_close("block input gradient", tdx.data(), rdx.data() + off, Nl * C);
  expect_grads_match(tps, rps);
}

TEST(TensorParallel, BlockMatchesUnsharded) { check_block(small_config(), false); }
TEST(TensorParallel, SequenceParallelBlockMatchesUnsharded) { check_block(small_config(), true); }
// 8 query heads on 2 key/value heads: split at tp 2, replicated (their gradients summed over
// the ranks sharing a head) at tp 4.
TEST(TensorParallel, LlamaGqaBlockMatchesUnsharded) { check_block(llama_config(false), false); }
TEST(TensorParallel, LlamaGqaSequenceParallelBlockMatchesUnsharded) { check_block(llama_config(false), true); }

// ---------------------------------------------------------------- embedding
void check_embedding(bool sp) {
  SCOPED_TRACE(sp ? "sequence parallel" : "tensor parallel");
  const nn::ModelConfig cfg = small_config();
  const int64_t B = 3, T = 5, N = B * T, C = cfg.n_embd;
  const nn::StageSpec stage{0, 0, true, false};
  MemoryTracker tracker;
  nn::Model ref(cfg, {}, stage), tp(cfg, tp_ctx(sp), stage);
  ref.allocate(tracker), tp.allocate(tracker);
  init_params(ref.params()), init_params(tp.params());
  std::vector<int32_t> ids(static_cast<std::size_t>(N));
  for (int64_t i = 0; i < N; ++i) ids[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 389 + 11) % cfg.vocab_size);
  ids[3] = ids[9];  // a repeated token accumulates twice
  ids[0] = cfg.vocab_size - 1;
  const std::vector<float> dx = randn(3, N * C);
  nn::ModelActivations ra = ref.make_activations(tracker, B, T), ta = tp.make_activations(tracker, B, T);

  ref.embed_forward(ra, ids.data(), B, T);
  ref.blocks_backward(ra, B, T);  // no blocks: allocates residual_grad()
  std::copy(dx.begin(), dx.end(), ref.residual_grad());
  ref.embed_backward(ra, B, T);

  const nn::RowSplit rows = sp ? tp.tp().rows(N) : nn::RowSplit{0, N, {}};
  const int64_t off = rows.begin * C, n = rows.count * C;
  EXPECT_EQ(tp.local_rows(N), rows.count);
  tp.embed_forward(ta, ids.data(), B, T);
  tp.blocks_backward(ta, B, T);
  std::copy(dx.begin() + off, dx.begin() + off + n, tp.residual_grad());
  tp.embed_backward(ta, B, T);
  expect_close("embedding output", ta.stage_input(), ra.stage_input() + off, n, 1e-6);
  expect_grads_match(tp.params(), ref.params());
}

TEST(TensorParallel, VocabParallelEmbeddingMatchesUnsharded) { check_embedding(false); }
TEST(TensorParallel, SequenceParallelEmbeddingMatchesUnsharded) { check_embedding(true); }

// ---------------------------------------------------------------- head + vocab-parallel loss
void check_head(bool sp, int vocab) {
  SCOPED_TRACE(fmt::format("{} vocab {}", sp ? "sequence parallel" : "tensor parallel", vocab));
  const nn::ModelConfig cfg = small_config(vocab);
  const int64_t B = 2, T = 7, N = B * T, C = cfg.n_embd;
  const nn::StageSpec stage{0, 0, false, true};
  MemoryTracker tracker;
  nn::Model ref(cfg, {}, stage), tp(cfg, tp_ctx(sp), stage);
  ref.allocate(tracker), tp.allocate(tracker);
  init_params(ref.params()), init_params(tp.params());
  std::vector<int32_t> targets(static_cast<std::size_t>(N));
  // Targets in every rank's vocabulary slice, the last real token and an ignored position.
  for (int64_t i = 0; i < N; ++i) targets[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * vocab) / N);
  targets[1] = vocab - 1;
  targets[4] = -1;
  const std::vector<float> x = randn(4, N * C, 2.0f);
  const float dloss = 1.0f / static_cast<float>(N);
  nn::ModelActivations ra = ref.make_activations(tracker, B, T), ta = tp.make_activations(tracker, B, T);

  std::copy(x.begin(), x.end(), ra.stage_output());
  const double rloss = ref.head_forward_backward(ra, targets.data(), B, T, dloss);
  const std::vector<float> rlosses(ra.losses.data(), ra.losses.data() + N);

  const nn::RowSplit rows = sp ? tp.tp().rows(N) : nn::RowSplit{0, N, {}};
  const int64_t off = rows.begin * C, n = rows.count * C;
  std::copy(x.begin() + off, x.begin() + off + n, ta.stage_output());
  const double tloss = tp.head_forward_backward(ta, targets.data(), B, T, dloss);
  EXPECT_NEAR(tloss, rloss, 1e-5 * std::fabs(rloss));
  expect_close("token losses", ta.losses.data(), rlosses.data(), N, 1e-5);
  EXPECT_EQ(ta.losses[4], 0.0f);
  expect_close("head input gradient", tp.residual_grad(), ref.residual_grad() + off, n);
  expect_grads_match(tp.params(), ref.params());
  // Padding columns of dlogits are exactly zero, so padding rows of wte never move.
  const int wte = tp.params().find("wte.weight");
  nn::for_each_local_element(tp.params().info(wte), [&](int64_t l, int64_t g) {
    if (g < 0) {
      ASSERT_EQ(tp.params().grad(wte)[l], 0.0f) << "padding row gradient";
    }
  });
}

TEST(TensorParallel, VocabParallelLossMatchesUnpadded) {
  check_head(false, 1003);  // 1003 = 17 * 59: no tp divides it
  check_head(false, 37);    // padded to 64 at tp 4: the last rank has no real columns
}
TEST(TensorParallel, SequenceParallelHeadMatchesUnsharded) {
  check_head(true, 1003);
  check_head(true, 37);
}

// ---------------------------------------------------------------- whole model
void check_gpt(const nn::ModelConfig& cfg, bool sp) {
  SCOPED_TRACE(fmt::format("{} {}", cfg.describe(), sp ? "sequence parallel" : "tensor parallel"));
  const int64_t B = 2, T = 7, N = B * T;
  MemoryTracker tracker;
  nn::Model ref(cfg), tp(cfg, tp_ctx(sp));
  ref.allocate(tracker), tp.allocate(tracker);
  init_params(ref.params()), init_params(tp.params());
  std::vector<int32_t> ids(static_cast<std::size_t>(N)), targets(ids.size());
  for (int64_t i = 0; i < N; ++i) {
    ids[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 577 + 3) % cfg.vocab_size);
    targets[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 211 + 990) % cfg.vocab_size);
  }
  const float dloss = 1.0f / static_cast<float>(N);
  nn::ModelActivations ra = ref.make_activations(tracker, B, T), ta = tp.make_activations(tracker, B, T);
  // Two micro-batches: gradients accumulate (the SP LayerNorm gradients are summed over tp
  // inside each backward, so nothing is left for the caller).
  double rloss = 0, tloss = 0;
  for (int mb = 0; mb < 2; ++mb) {
    rloss += ref.forward_backward(ra, ids.data(), targets.data(), B, T, dloss);
    tloss += tp.forward_backward(ta, ids.data(), targets.data(), B, T, dloss);
    std::rotate(ids.begin(), ids.begin() + 5, ids.end());
  }
  EXPECT_NEAR(tloss, rloss, 1e-5 * std::fabs(rloss));
  expect_grads_match(tp.params(), ref.params());
  // Replicated parameters get bit-identical gradients on every tp rank (so they stay identical
  // after the optimizer, and the grad norm may count one rank's copy).
  for (const nn::ParamInfo& info : tp.params().infos()) {
    if (!info.shard.is_full()) continue;
    const float* g = tp.params().grad(tp.params().find(info.name));
    std::vector<float> all(static_cast<std::size_t>(info.numel * tp_size()));
    const std::vector<int64_t> counts(static_cast<std::size_t>(tp_size()), info.numel);
    g_tp->all_gather(g, all.data(), counts);
    for (int r = 0; r < tp_size(); ++r) {
      for (int64_t i = 0; i < info.numel; ++i) {
        ASSERT_EQ(all[static_cast<std::size_t>(r * info.numel + i)], g[i])
            << info.name << " differs between tp ranks " << tp_rank() << " and " << r;
      }
    }
  }

  const double rl = ref.forward_loss(ra, ids.data(), targets.data(), B, T);
  const double tl = tp.forward_loss(ta, ids.data(), targets.data(), B, T);
  EXPECT_NEAR(tl, rl, 1e-5 * std::fabs(rl)) << "forward_loss";

  // Generation: the gathered last-position logits equal the unsharded model's (padded
  // vocabulary; the padding columns are 0 since the padding rows of wte are 0).
  for (int64_t len : {int64_t{3}, T}) {  // 3 tokens at tp 4: a rank holds no rows
    nn::ModelActivations rg = ref.make_activations(tracker, 1, len), tg = tp.make_activations(tracker, 1, len);
    const float* rlog = ref.forward_last_logits(rg, ids.data(), 1, len);
    const float* tlog = tp.forward_last_logits(tg, ids.data(), 1, len);
    const int64_t Vp1 = cfg.padded_vocab(1), Vpt = cfg.padded_vocab(tp_size());
    expect_close("last logits", tlog, rlog, cfg.vocab_size);
    for (int64_t v = cfg.vocab_size; v < Vpt; ++v) ASSERT_EQ(tlog[v], 0.0f);
    EXPECT_GE(Vpt, Vp1);
  }
}

TEST(TensorParallel, WholeGptMatchesUnsharded) { check_gpt(small_config(), false); }
TEST(TensorParallel, WholeGptWithSequenceParallelMatchesUnsharded) { check_gpt(small_config(), true); }
TEST(TensorParallel, WholeLlamaMatchesUnsharded) {
  check_gpt(llama_config(false), false);
  check_gpt(llama_config(true), false);
}
TEST(TensorParallel, WholeLlamaWithSequenceParallelMatchesUnsharded) {
  check_gpt(llama_config(false), true);
  check_gpt(llama_config(true), true);
}

// Activation memory: sequence parallelism divides the LayerNorm/residual regions by tp.
TEST(TensorParallel, ActivationFloatsMatchTheAllocationAndShrinkWithSequenceParallel) {
  const nn::ModelConfig cfg = small_config();
  const int64_t B = 2, T = 8;
  for (bool sp : {false, true}) {
    MemoryTracker tracker;
    nn::Model tp(cfg, tp_ctx(sp));
    nn::ModelActivations a = tp.make_activations(tracker, B, T);
    EXPECT_EQ(tracker.current(MemCategory::kActivations),
              static_cast<std::size_t>(tp.activation_bytes(B, T)));
  }
  nn::Model plain(cfg, tp_ctx(false)), seq(cfg, tp_ctx(true));
  EXPECT_LT(seq.activation_bytes(B, T), plain.activation_bytes(B, T));
}

// ---------------------------------------------------------------- bad input
TEST(TensorParallel, BadInputGivesClearErrors) {
  nn::ModelConfig cfg = small_config();
  auto message_of = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  std::string m = message_of([&] { parallel::validate_tensor_parallel(cfg, 8, 4); });
  EXPECT_NE(m.find("tp (8) is larger than the world size (4)"), std::string::npos) << m;
  m = message_of([&] { parallel::validate_tensor_parallel(cfg, 3, 6); });
  EXPECT_NE(m.find("n_head (4) is not divisible by tp (3)"), std::string::npos) << m;
  m = message_of([&] { parallel::validate_tensor_parallel(cfg, 2, 3); });
  EXPECT_NE(m.find("not a multiple of tp (2)"), std::string::npos) << m;
  EXPECT_NO_THROW(parallel::validate_tensor_parallel(cfg, 4, 8));
  // The model itself refuses heads it cannot split (tp = 2 or 4 here, 3 heads).
  cfg.n_head = 3, cfg.n_embd = 30;
  m = message_of([&] { nn::Model model(cfg, tp_ctx(false)); });
  EXPECT_NE(m.find(fmt::format("n_head (3) is not divisible by tp ({})", tp_size())), std::string::npos) << m;
  // A context that disagrees with its communicator.
  nn::TpContext bad = tp_ctx(false);
  bad.rank = (bad.rank + 1) % bad.size;
  m = message_of([&] { nn::Model model(small_config(), bad); });
  EXPECT_NE(m.find("but its communicator is rank"), std::string::npos) << m;
}

}  // namespace
}  // namespace trident

int main(int argc, char** argv) {
  std::unique_ptr<trident::comm::Mesh> mesh;
  return trident::test::run_tests_on_every_rank(
      argc, argv,
      [&] {
        trident::kernels::set_num_threads(1);
        // Tests must never hang: any collective waiting past 30 s aborts the whole job.
        trident::comm::CommOptions options;
        options.timeout_s = 30.0;
        options.on_timeout = trident::comm::TimeoutAction::kAbort;
        int world = 1;
        MPI_Comm_size(MPI_COMM_WORLD, &world);
        mesh = std::make_unique<trident::comm::Mesh>(trident::comm::make_mpi_communicator(MPI_COMM_WORLD, "world", options), trident::comm::MeshShape{1, 1, world});
        trident::g_mesh = mesh.get();
        trident::g_tp = std::make_unique<trident::parallel::CommTensorParallel>(mesh->tp());
      },
      [&] {
        trident::g_tp.reset();
        mesh.reset();
      });
}
