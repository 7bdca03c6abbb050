// Planner memory model against hand-computed formulas: ZeRO stages 0-3 over dp, a pipeline
// split (embedding on the first stage, the head's wte copy on the last, 1F1B vs GPipe live
// micro-batches), a tensor-parallel split (Korthikanti et al.'s per-layer activations in fp32
// without dropout: the model's BlockActivations); and, for expert parallelism, the
// activation estimate against the MemoryTracker of two ep ranks running a step in threads.
#include <gtest/gtest.h>

#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>

#include "core/memory.h"
#include "kernels/kernels.h"
#include "nn/expert_parallel.h"
#include "nn/model.h"
#include "plan/memory_model.h"

namespace trident::plan {
namespace {

// tiny: L = 8, NH = 4, C = 32, n_positions 64, vocab 1000 padded to 1024 (1024 at tp 2 too).
constexpr double C = 32, L = 8, Vp = 1024, P = 64;
constexpr double kBlock = 12 * C * C + 13 * C;                    // one block's parameters
constexpr double kEmbed = Vp * C + P * C;                         // wte (padded) + wpe
constexpr double kPsi = kEmbed + L * kBlock + 2 * C;              // + ln_f

PlanRequest request(int world, int64_t batch) {
  PlanRequest r;
  r.model = nn::model_preset("tiny");
  r.world = world;
  r.batch_size = batch;
  r.seq_len = 16;
  return r;
}

// Activation floats of one micro-batch of B x T on a chunk of `layers` blocks at tp `tp`.
double act_floats(double B, double T, double layers, bool head, int tp) {
  const double N = B * T;
  const double block = N * (3 * C + 4) + N * 12 * C / tp + B * (4.0 / tp) * T * T;
  double f = (layers + 1) * N * C + layers * block;
  if (head) f += N * C + 2 * N + N * Vp / tp + N;
  return f;
}

TEST(PlanMemory, ZeroStagesFollowTheFormulas) {
  PlanRequest r = request(2, 4);
  r.bucket_mb = 0.01;  // 2621 floats: the largest parameter (wte, 32768) is the bucket
  Layout l;
  l.dp = 2;
  const double half = std::ceil(kPsi / 2);
  const double bucket = Vp * C;
  const double max_group = kEmbed;  // embeddings group: wte + wpe
  const double acts = 4 * act_floats(2, 16, L, true, 1);
  for (int zero = 0; zero <= 3; ++zero) {
    l.zero = zero;
    const MemoryPrediction m = predict_memory(r, l);
    ASSERT_EQ(m.by_pp_rank.size(), 1u);
    EXPECT_EQ(m.params_by_pp_rank[0], static_cast<int64_t>(kPsi));
    const MemoryBreakdown& b = m.worst();
    EXPECT_DOUBLE_EQ(b.params, zero >= 3 ? 4 * (half + 2 * max_group) : 4 * kPsi) << zero;
    EXPECT_DOUBLE_EQ(b.grads, zero >= 2 ? 4 * (half + 2 * bucket) : 4 * kPsi) << zero;
    EXPECT_DOUBLE_EQ(b.optimizer, zero >= 1 ? 8 * half : 8 * kPsi) << zero;
    EXPECT_DOUBLE_EQ(b.activations, acts) << zero;
  }
}

// --grad-dtype bf16|fp16: ZeRO 2-3's gradient shard at 2 bytes an element, the two fp32
// buckets as before; ZeRO 0-1: the flat buffer at 2 bytes an element plus the largest layer
// group's fp32 working buffer (the embeddings group, wte + wpe: larger than the head's ln_f +
// the tied wte it writes first).
TEST(PlanMemory, SixteenBitGradientsHalveTheShardOnly) {
  PlanRequest r = request(2, 4);
  r.bucket_mb = 0.01;
  Layout l;
  l.dp = 2;
  const double half = std::ceil(kPsi / 2);
  const double bucket = Vp * C;
  for (parallel::GradDType d : {parallel::GradDType::kBf16, parallel::GradDType::kFp16}) {
    r.grad_dtype = d;
    r.precision = d == parallel::GradDType::kBf16 ? kernels::Precision::kBf16 : kernels::Precision::kFp16;
    for (int zero = 2; zero <= 3; ++zero) {
      l.zero = zero;
      EXPECT_DOUBLE_EQ(predict_memory(r, l).worst().grads, 2 * half + 4 * 2 * bucket) << zero;
    }
    for (int zero = 0; zero <= 1; ++zero) {
      l.zero = zero;
      EXPECT_DOUBLE_EQ(predict_memory(r, l).worst().grads, 2 * kPsi + 4 * kEmbed) << zero;
    }
  }
}

// LoRA (r 2 on c_attn, [96, 32] Conv1D [32, 96]: A [2, 32], B [96, 2]) and QLoRA on a q4 g32 base:
// a layer's four matrices are 32x96, 32x32, 32x128, 128x32 (12288 weights), packed as
// rows * cols / 2 + rows * (cols / 32) * 8 bytes with rows the outputs: 2304 + 768 + 3072 + 3072.
TEST(PlanMemory, LoraAndQloraCountAdaptersAndThePackedBase) {
  constexpr double kAdapters = L * 2 * (32 + 96), kLayerWeights = 12288, kLayerPacked = 9216;
  PlanRequest r = request(1, 4);
  r.model.lora = nn::LoraConfig{2, 4.0, {"c_attn"}};
  const Layout l;
  const MemoryBreakdown lora = predict_memory(r, l).worst();
  EXPECT_DOUBLE_EQ(lora.params, 4 * (kPsi + kAdapters));
  EXPECT_DOUBLE_EQ(lora.grads, 4 * kAdapters);  // ZeRO 0: the gradient buffer holds the adapters only
  EXPECT_DOUBLE_EQ(lora.optimizer, 8 * kAdapters);  // moments for the adapters only
  EXPECT_DOUBLE_EQ(lora.packed_base, 0);
  r.model.packed_base_format = "q4";
  r.model.packed_base_group = 32;
  const MemoryBreakdown q = predict_memory(r, l).worst();
  EXPECT_DOUBLE_EQ(q.params, 4 * (kPsi - L * kLayerWeights + kAdapters));
  EXPECT_DOUBLE_EQ(q.grads, 4 * kAdapters);
  EXPECT_DOUBLE_EQ(q.optimizer, 8 * kAdapters);
  EXPECT_DOUBLE_EQ(q.packed_base, L * kLayerPacked);
  EXPECT_DOUBLE_EQ(q.workspace - lora.workspace, 4 * kLayerWeights);  // one layer dequantized
  EXPECT_DOUBLE_EQ(q.activations, lora.activations);
  // ZeRO-1 over dp2, the prediction is the shard holding more adapters. QLoRA's flat buffer
  // (40256 elements) is mostly the embeddings (34816): rank 0's half is those, rank 1 holds every
  // layer and so every adapter. LoRA's (138560) splits inside the third of 8 layers: rank 1 holds more.
  r.world = 2;
  Layout z;
  z.dp = 2, z.zero = 1;
  EXPECT_DOUBLE_EQ(predict_memory(r, z).worst().optimizer, 8 * kAdapters);
  r.model.packed_base_format.clear();
  const MemoryBreakdown s = predict_memory(r, z).worst();
  EXPECT_GT(s.optimizer, 8 * kAdapters / 2);
  EXPECT_LT(s.optimizer, 8 * kAdapters);
}

TEST(PlanMemory, OffloadMovesTheMomentsToDiskLeavingStagingResident) {
  PlanRequest r = request(2, 4);
  Layout l;
  l.dp = 2;
  const double half = std::ceil(kPsi / 2);
  r.offload_optimizer = true;
  r.offload_block_bytes = 64 * 1024;
  for (int zero = 0; zero <= 3; ++zero) {
    l.zero = zero;
    PlanRequest plain = r;
    plain.offload_optimizer = false;
    const MemoryBreakdown on = predict_memory(r, l).worst(), off = predict_memory(plain, l).worst();
    EXPECT_DOUBLE_EQ(on.offloaded, zero >= 1 ? 8 * half : 8 * kPsi) << zero;
    EXPECT_DOUBLE_EQ(on.optimizer, 6 * 64 * 1024) << zero;  // three blocks of both moments
    EXPECT_DOUBLE_EQ(off.offloaded, 0) << zero;
    EXPECT_DOUBLE_EQ(off.total() - on.total(), off.optimizer - 6 * 64 * 1024) << zero;
  }
  // Interleaved: one store, so one set of staging blocks, per model chunk.
  Layout v;
  v.pp = 2;
  v.schedule = pp::ScheduleKind::kInterleaved;
  v.virtual_stages = 2;
  v.micro_batches = 2;
  r.world = 2;
  EXPECT_DOUBLE_EQ(predict_memory(r, v).worst().optimizer, 2 * 6 * 64 * 1024);
}

// --offload optimizer in bf16 at ZeRO 1 on one rank: the sharded master (the layer matrices,
// 8 x 12 C^2 = 98,304 operand-only elements of tiny's 136,512) goes to disk with the moments:
// offloaded 8 x 136,512 + 4 x 98,304 = 1,485,312 B; the parameters keep the 16-bit copy of every
// element and the fp32 values of the rest, 2 x 136,512 + 4 x 38,208 = 425,856 B (without offload
// + 4 x 98,304 = 819,072 B); the staging blocks hold three parts (9 x 64 KiB). ZeRO 0 keeps the
// fp32 values in memory (no sharded master there): 6 bytes an element, the moments alone on disk.
TEST(PlanMemory, OffloadTakesTheBf16MasterToDiskAtZero1And2) {
  PlanRequest r = request(1, 4);
  r.precision = kernels::Precision::kBf16;
  r.offload_optimizer = true;
  r.offload_block_bytes = 64 * 1024;
  PlanRequest plain = r;
  plain.offload_optimizer = false;
  constexpr double kOperand = L * 12 * C * C;
  ASSERT_DOUBLE_EQ(kPsi, 136512);
  ASSERT_DOUBLE_EQ(kOperand, 98304);
  Layout l;
  l.zero = 1;
  const MemoryBreakdown on = predict_memory(r, l).worst(), off = predict_memory(plain, l).worst();
  EXPECT_DOUBLE_EQ(on.offloaded, 1485312);
  EXPECT_DOUBLE_EQ(on.params, 425856);
  EXPECT_DOUBLE_EQ(off.params, 819072);
  EXPECT_DOUBLE_EQ(on.optimizer, 9 * 64 * 1024);
  EXPECT_DOUBLE_EQ(on.grads, off.grads);
  l.zero = 2;  // one rank: the shard is the whole model, the same bytes on disk and resident
  const MemoryBreakdown z2 = predict_memory(r, l).worst();
  EXPECT_DOUBLE_EQ(z2.offloaded, 1485312);
  EXPECT_DOUBLE_EQ(z2.params, 425856);
  l.zero = 0;
  const MemoryBreakdown z0 = predict_memory(r, l).worst();
  EXPECT_DOUBLE_EQ(z0.params, 6 * kPsi);
  EXPECT_DOUBLE_EQ(z0.offloaded, 8 * kPsi);
  EXPECT_DOUBLE_EQ(z0.optimizer, 6 * 64 * 1024);
}

// --offload optimizer+params at ZeRO 3: the value shard joins the moments on disk (12 bytes per
// shard element), the staging blocks hold three parts, and the resident parameters are the two
// gathered groups plus two shard slices of the largest group (pages of slack at both ends).
// Below ZeRO 3 it changes nothing against optimizer offload (the run refuses it there).
TEST(PlanMemory, ParamsOffloadMovesTheShardToDiskAtZero3) {
  PlanRequest r = request(2, 4);
  r.offload_optimizer = true;
  r.offload_params = true;
  r.offload_block_bytes = 64 * 1024;
  PlanRequest opt = r;
  opt.offload_params = false;
  Layout l;
  l.dp = 2;
  const double half = std::ceil(kPsi / 2);
  const double max_group = kEmbed;
  l.zero = 3;
  const MemoryBreakdown on = predict_memory(r, l).worst(), base = predict_memory(opt, l).worst();
  EXPECT_DOUBLE_EQ(on.offloaded, 12 * half);
  EXPECT_DOUBLE_EQ(on.optimizer, 9 * 64 * 1024);
  EXPECT_DOUBLE_EQ(on.params, 4 * (2 * max_group + 2 * (std::ceil(max_group / 2) + 2048)));
  EXPECT_DOUBLE_EQ(base.params, 4 * (half + 2 * max_group));
  EXPECT_DOUBLE_EQ(on.grads, base.grads);
  l.zero = 2;
  const MemoryBreakdown z2 = predict_memory(r, l).worst(), z2opt = predict_memory(opt, l).worst();
  EXPECT_DOUBLE_EQ(z2.total(), z2opt.total());
  EXPECT_DOUBLE_EQ(z2.offloaded, z2opt.offloaded);
}

TEST(PlanMemory, PipelineSplitPutsEmbeddingFirstAndHeadCopyLast) {
  PlanRequest r = request(8, 16);
  Layout l;
  l.dp = 4, l.pp = 2, l.micro_batches = 4;  // B = 16 / 4 / 4 = 1 per micro-batch
  l.schedule = pp::ScheduleKind::kOneFOneB;
  MemoryPrediction m = predict_memory(r, l);
  ASSERT_EQ(m.by_pp_rank.size(), 2u);
  EXPECT_EQ(m.params_by_pp_rank[0], static_cast<int64_t>(kEmbed + 4 * kBlock));
  EXPECT_EQ(m.params_by_pp_rank[1], static_cast<int64_t>(4 * kBlock + 2 * C + Vp * C));
  // 1F1B: rank 0 holds min(pp, M) = 2 micro-batches, rank 1 one.
  EXPECT_DOUBLE_EQ(m.by_pp_rank[0].activations, 4 * 2 * act_floats(1, 16, 4, false, 1));
  EXPECT_DOUBLE_EQ(m.by_pp_rank[1].activations, 4 * 1 * act_floats(1, 16, 4, true, 1));
  // GPipe: all M on every rank.
  l.schedule = pp::ScheduleKind::kGPipe;
  m = predict_memory(r, l);
  EXPECT_DOUBLE_EQ(m.by_pp_rank[0].activations, 4 * 4 * act_floats(1, 16, 4, false, 1));
  EXPECT_DOUBLE_EQ(m.by_pp_rank[1].activations, 4 * 4 * act_floats(1, 16, 4, true, 1));
  EXPECT_EQ(m.worst_pp_rank, 1);  // the logits
}

TEST(PlanMemory, RecomputeModesFollowTheFormulas) {
  // docs/memory.md's recompute table on the 1F1B split above (rank 0: 2 live micro-batches of
  // 4 layers, rank 1: 1 with the head): selective drops each layer's B*NH*T^2 probabilities
  // per micro-batch and holds one such buffer per chunk; full keeps only the layers' inputs
  // per micro-batch and holds one layer's activations plus its (N, C) rerun output per chunk.
  PlanRequest r = request(8, 16);
  Layout l;
  l.dp = 4, l.pp = 2, l.micro_batches = 4;
  l.schedule = pp::ScheduleKind::kOneFOneB;
  const double B = 1, T = 16, N = B * T;
  const double core = B * 4 * T * T, layer = N * (3 * C + 4) + N * 12 * C + core;
  const double head = N * C + 2 * N + N * Vp + N;
  r.recompute = nn::Recompute::kSelective;
  MemoryPrediction m = predict_memory(r, l);
  EXPECT_DOUBLE_EQ(m.by_pp_rank[0].activations, 4 * (2 * (act_floats(1, 16, 4, false, 1) - 4 * core) + core));
  EXPECT_DOUBLE_EQ(m.by_pp_rank[1].activations, 4 * (act_floats(1, 16, 4, true, 1) - 4 * core + core));
  r.recompute = nn::Recompute::kFull;
  m = predict_memory(r, l);
  EXPECT_DOUBLE_EQ(m.by_pp_rank[0].activations, 4 * (2 * 5 * N * C + layer + N * C));
  EXPECT_DOUBLE_EQ(m.by_pp_rank[1].activations, 4 * (5 * N * C + head + layer + N * C));
}

TEST(PlanMemory, ExpertParallelismDividesExpertParameters) {
  // mixtral-tiny: 4 layers of E = 4 experts (w1, w2, w3: 3 I C each, I = 48, C = 32). At ep the
  // rank holds E / ep of them; every other parameter (router included) is whole.
  PlanRequest r = request(4, 8);
  r.model = nn::model_preset("mixtral-tiny");
  const double expert = 3.0 * 48 * 32, experts = 4 * 4 * expert;
  Layout l;
  l.dp = 4;
  const MemoryPrediction full = predict_memory(r, l);
  const double psi = static_cast<double>(full.params_by_pp_rank[0]);
  // Every parameter once, plus the vocabulary padding (1000 -> 1024) of the untied embedding and head.
  EXPECT_EQ(psi, static_cast<double>(r.model.num_parameters()) + 2 * (Vp - 1000) * C);
  for (int ep : {2, 4}) {
    l.ep = ep;
    const MemoryPrediction m = predict_memory(r, l);
    EXPECT_EQ(static_cast<double>(m.params_by_pp_rank[0]), psi - experts + experts / ep) << ep;
    EXPECT_DOUBLE_EQ(m.worst().params, 4 * (psi - experts + experts / ep)) << ep;
    EXPECT_DOUBLE_EQ(m.worst().optimizer, 8 * (psi - experts + experts / ep)) << ep;
  }
}

// An ep group of ranks as threads of this process: each call posts this rank's buffer and
// counts, waits for all, copies its chunk from every source, and waits again before anyone
// reuses a buffer (the semantics of nn::ExpertParallelComm, without MPI).
struct ThreadGroup {
  explicit ThreadGroup(int n) : size(n), sync(n), in(n), counts(n) {}
  int size;
  std::barrier<> sync;
  std::vector<const void*> in;
  std::vector<std::vector<int64_t>> counts;  // per source: elements to each rank
};

class ThreadEp final : public nn::ExpertParallelComm {
 public:
  ThreadEp(ThreadGroup& g, int rank) : g_(g), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return g_.size; }
  void all_to_all_v(const float* in, std::span<const int64_t> send, float* out, std::span<const int64_t>) override {
    exchange(in, std::vector<int64_t>(send.begin(), send.end()), out, sizeof(float));
  }
  void all_to_all_v16(const uint16_t* in, std::span<const int64_t> send, uint16_t* out, std::span<const int64_t>) override {
    exchange(in, std::vector<int64_t>(send.begin(), send.end()), out, sizeof(uint16_t));
  }
  void all_to_all_counts(const int64_t* in, int64_t* out, int64_t per_rank) override {
    exchange(in, std::vector<int64_t>(static_cast<std::size_t>(g_.size), per_rank), out, sizeof(int64_t));
  }

 private:
  void exchange(const void* in, std::vector<int64_t> send, void* out, std::size_t elem) {
    g_.in[rank_] = in;
    g_.counts[rank_] = std::move(send);
    g_.sync.arrive_and_wait();
    char* o = static_cast<char*>(out);
    for (int s = 0; s < g_.size; ++s) {
      int64_t at = 0;
      for (int r = 0; r < rank_; ++r) at += g_.counts[s][r];
      const auto n = static_cast<std::size_t>(g_.counts[s][rank_]) * elem;
      std::memcpy(o, static_cast<const char*>(g_.in[s]) + at * static_cast<int64_t>(elem), n);
      o += n;
    }
    g_.sync.arrive_and_wait();
  }
  ThreadGroup& g_;
  int rank_;
};

// mixtral-tiny with every token routed to all E = 4 experts (k = E): routing is balanced
// whatever the router, each ep rank receives as many rows as it sends, so the estimate
// (nn/moe_exchange.h's exchange buffers per MoE layer) is exact, not a bound. Under bf16 the
// owner's received inputs xo are 16-bit words (nn/moe_mlp.h), the other two buffers fp32.
void check_ep_activations(kernels::Precision precision) {
  PlanRequest r = request(2, 4);
  r.precision = precision;
  r.model = nn::model_preset("mixtral-tiny");
  r.model.n_experts_per_tok = r.model.n_experts;
  const int64_t B = 2, T = r.seq_len;  // 4 sequences over dp 2, one micro-batch
  for (int ep : {1, 2}) {
    Layout l;
    l.dp = 2, l.ep = ep;
    const MemoryPrediction predicted = predict_memory(r, l);
    ThreadGroup group(ep);
    std::vector<double> peak(static_cast<std::size_t>(ep));
    std::vector<double> loss(static_cast<std::size_t>(ep));
    auto run_rank = [&](int q) {
      kernels::set_num_threads(1);
      ThreadEp comm(group, q);
      nn::TpContext tp;
      tp.ep = nn::EpContext{q, ep, ep > 1 ? &comm : nullptr};
      MemoryTracker tracker;
      nn::Model model(r.model, tp);
      model.set_precision(precision);
      model.allocate(tracker);
      model.params().initialize(5);
      nn::ModelActivations acts = model.make_activations(tracker, B, T);
      std::vector<int32_t> ids, targets;
      for (int64_t i = 0; i < B * T; ++i) {
        ids.push_back(static_cast<int32_t>((i * 13 + 7 * q) % 1000));
        targets.push_back(static_cast<int32_t>((i * 5 + q) % 1000));
      }
      model.params().zero_grads();
      loss[static_cast<std::size_t>(q)] = model.forward_backward(acts, ids.data(), targets.data(), B, T, 1.0f / (B * T));
      peak[static_cast<std::size_t>(q)] = static_cast<double>(tracker.peak(MemCategory::kActivations));
    };
    std::vector<std::thread> ranks;
    for (int q = 0; q < ep; ++q) ranks.emplace_back(run_rank, q);
    for (std::thread& t : ranks) t.join();
    for (int q = 0; q < ep; ++q) {
      EXPECT_TRUE(std::isfinite(loss[static_cast<std::size_t>(q)])) << "ep " << ep << " rank " << q;
      EXPECT_EQ(peak[static_cast<std::size_t>(q)], predicted.worst().activations) << "ep " << ep << " rank " << q;
    }
    if (ep == 2) {
      // What ep adds: per layer (4 MoE layers) three buffers of the k N routed rows x C: the
      // receive buffer and the owner's outputs in fp32, the owner's inputs in s bytes.
      Layout one = l;
      one.ep = 1;
      const double rows = static_cast<double>(r.model.n_experts_per_tok) * B * T;
      const double s = precision == kernels::Precision::kFp32 ? 4 : 2;
      EXPECT_DOUBLE_EQ(predicted.worst().activations - predict_memory(r, one).worst().activations,
                       4 * (4 + 4 + s) * rows * C);
    }
  }
}

TEST(PlanMemory, ExpertParallelActivationsMatchTheTrackerOfTwoEpRanks) { check_ep_activations(kernels::Precision::kFp32); }
TEST(PlanMemory, ExpertParallelBf16ActivationsMatchTheTrackerOfTwoEpRanks) {
  check_ep_activations(kernels::Precision::kBf16);
}

TEST(PlanMemory, LivePerChunkMatchesTheSchedules) {
  for (int M : {1, 2, 4, 8}) {
    for (int rank = 0; rank < 4; ++rank) {
      EXPECT_EQ(peak_live_per_chunk({pp::ScheduleKind::kOneFOneB, 4, M, 1}, rank)[0], std::min(4 - rank, M));
      EXPECT_EQ(peak_live_per_chunk({pp::ScheduleKind::kGPipe, 4, M, 1}, rank)[0], M);
    }
  }
}

TEST(PlanMemory, TensorParallelSplitsBlocksAndVocabulary) {
  PlanRequest r = request(2, 2);
  Layout l1, l2;
  l2.tp = 2;
  const MemoryPrediction m1 = predict_memory(r, l1), m2 = predict_memory(r, l2);
  const double psi1 = static_cast<double>(m1.params_by_pp_rank[0]);
  const double psi2 = static_cast<double>(m2.params_by_pp_rank[0]);
  // Matrices and wte halve; LayerNorms, wpe and the row-parallel biases stay whole.
  EXPECT_LT(psi2, 0.6 * psi1);
  EXPECT_GT(psi2, 0.5 * psi1);
  EXPECT_DOUBLE_EQ(m2.worst().params, 4 * psi2);
  // Korthikanti et al. (fp32, no dropout): the 12C-wide tensors and the attention matrix split
  // over tp, the LayerNorm inputs and the residual stay whole.
  EXPECT_DOUBLE_EQ(m2.worst().activations, 4 * act_floats(2, 16, L, true, 2));
  // Sequence parallelism also splits the residual stream's rows.
  r.sequence_parallel = l2.sequence_parallel = true;
  EXPECT_LT(predict_memory(r, l2).worst().activations, m2.worst().activations);
}

}  // namespace
}  // namespace trident::plan
