// Mixture-of-experts MLP forward/backward (see moe_mlp.h).
#include "nn/moe_mlp.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "kernels/kernels.h"
#include "kernels/moe_combine.h"
#include "nn/moe_exchange.h"
#include "nn/moe_router.h"

namespace trident::nn {

namespace {

int64_t routed_rows(const ModelConfig& c, int64_t N) { return N * c.n_experts_per_tok; }

}  // namespace

int64_t moe_exchange_floats(const ModelConfig& cfg, int64_t N) { return routed_rows(cfg, N) * cfg.n_embd; }

int64_t moe_exchange_buffer_bytes(const ModelConfig& cfg, int ep, int64_t N, kernels::Precision storage) {
  if (ep <= 1) return 0;
  const int64_t rows = moe_exchange_floats(cfg, N);
  return 4 * 2 * rows + SavedOperand::bytes(storage, rows);  // ex, yo (fp32), xo below (forward, ep > 1)
}

MoeActivations::MoeActivations(MemoryTracker& tracker, const ModelConfig& cfg, int tp, int64_t N,
                               kernels::Precision storage)
    : tracker_(&tracker) {
  const auto A = MemCategory::kActivations;
  const auto E = static_cast<std::size_t>(cfg.n_experts), K = static_cast<std::size_t>(cfg.n_experts_per_tok);
  const auto R = static_cast<std::size_t>(routed_rows(cfg, N)), n = static_cast<std::size_t>(N);
  const auto Il = static_cast<std::size_t>(cfg.expert_width() / tp), C = static_cast<std::size_t>(cfg.n_embd);
  probs = FloatBuffer(tracker, A, n * E);
  weights = FloatBuffer(tracker, A, n * K);
  h1 = FloatBuffer(tracker, A, R * Il);
  h3 = FloatBuffer(tracker, A, R * Il);
  act = SavedOperand(tracker, storage, static_cast<int64_t>(R * Il));
  y = FloatBuffer(tracker, A, R * C);
  xs = SavedOperand(tracker, storage, static_cast<int64_t>(R * C));
  dys = FloatBuffer(tracker, A, R * C);
  xo = SavedOperand(tracker, storage, 0);  // grown at ep > 1 to the rows received
  experts.assign(n * K, 0);
  row_of.assign(n * K, 0);
  token_of.assign(R, 0);
  offsets.assign(E + 1, 0);
}

void MoeActivations::ensure(FloatBuffer& b, std::size_t n) const {
  if (b.size() < n) b = FloatBuffer(*tracker_, MemCategory::kActivations, n);
}

int64_t MoeActivations::bytes(const ModelConfig& cfg, int tp, int64_t N, kernels::Precision storage) {
  const int64_t R = routed_rows(cfg, N), Il = cfg.expert_width() / tp, C = cfg.n_embd;
  // probs, weights; h1, h3, y, dys in fp32; act and xs as saved operands.
  return 4 * (N * (cfg.n_experts + cfg.n_experts_per_tok) + R * (2 * Il + 2 * C)) + SavedOperand::bytes(storage, R * Il) +
         SavedOperand::bytes(storage, R * C);
}

MoeMlp::MoeMlp(const ParameterSet& params, const ModelConfig& cfg, const TpContext& tp, int layer)
    : cfg_(cfg), tp_(tp), ep_(tp.ep) {
  TRI_CHECK(ep_.size >= 1 && cfg.n_experts % ep_.size == 0,
            "expert parallelism ep {} does not divide the {} experts of each layer: each ep rank "
            "holds num_local_experts / ep of them; choose an ep that divides {}",
            ep_.size, cfg.n_experts, cfg.n_experts);
  // No communicator: a model built only to count parameters and memory (plan/memory_model).
  TRI_CHECK(!ep_.comm || (ep_.comm->size() == ep_.size && ep_.comm->rank() == ep_.rank),
            "EpContext says ep rank {} of {} but its communicator is rank {} of {}", ep_.rank, ep_.size,
            ep_.comm ? ep_.comm->rank() : 0, ep_.comm ? ep_.comm->size() : 0);
  local_ = ep_.local_count(cfg.n_experts);
  first_ = ep_.first_expert(cfg.n_experts);
  const std::string p = fmt::format("model.layers.{}.block_sparse_moe.", layer);
  router_ = params.find(p + "gate.weight");
  TRI_CHECK(router_ >= 0, "{}gate.weight is not registered", p);
  for (int e = first_; e < first_ + local_; ++e) {
    w1_.push_back(params.find(fmt::format("{}experts.{}.w1.weight", p, e)));
    w2_.push_back(params.find(fmt::format("{}experts.{}.w2.weight", p, e)));
    w3_.push_back(params.find(fmt::format("{}experts.{}.w3.weight", p, e)));
  }
}

void MoeMlp::forward(kernels::MatmulEngine& mm, const ParameterSet& ps, MoeActivations& a, float* partial, const float* x, int64_t B,
                     int64_t T) const {
  namespace k = kernels;
  const int64_t N = B * T, C = cfg_.n_embd, E = cfg_.n_experts, K = cfg_.n_experts_per_tok;
  const int64_t Il = cfg_.expert_width() / tp_.size;
  const float* wr = ps.data(router_);
  // Router (nn/moe_router.h): per token, independent of the rows it shares a call with.
  a.lse.resize(static_cast<std::size_t>(N));
  a.z_sum = 0.0;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    a.lse[static_cast<std::size_t>(n)] = route_token(x + n * C, wr, bias_, cfg_, a.probs.data() + n * E,
                                                     a.experts.data() + n * K, a.weights.data() + n * K);
  }
  for (double lse : a.lse) a.z_sum += lse * lse;  // in token order
  // Capacity, per sequence (nn/moe_router.h): the dropped pairs get no routed row.
  const int64_t cap = expert_capacity(cfg_.expert_capacity_factor, T, K, E);
  a.keep.resize(static_cast<std::size_t>(N * K));
  a.dropped = 0;
  for (int64_t b = 0; b < B; ++b) {
    a.dropped += apply_capacity(a.experts.data() + b * T * K, a.probs.data() + b * T * E, T, E, K, cap,
                                a.keep.data() + b * T * K);
  }
  // Group the kept routed rows by expert, tokens in order within each.
  std::fill(a.offsets.begin(), a.offsets.end(), 0);
  for (int64_t i = 0; i < N * K; ++i) {
    if (a.keep[i]) ++a.offsets[a.experts[i] + 1];
  }
  for (int64_t e = 0; e < E; ++e) a.offsets[e + 1] += a.offsets[e];
  std::vector<int64_t> next(a.offsets.begin(), a.offsets.end() - 1);
  // The routed rows in fp32: into xs itself, or (16-bit xs) into dys, free until backward, and
  // rounded from there. At ep > 1 they are the rows sent to the owners (as xs's 16-bit words
  // when 16-bit).
  float* rows = a.xs.target(a.dys.data());
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t j = 0; j < K; ++j) {
      if (!a.keep[n * K + j]) {
        a.row_of[n * K + j] = -1;
        continue;
      }
      const int64_t r = next[a.experts[n * K + j]]++;
      a.row_of[n * K + j] = static_cast<int32_t>(r);
      a.token_of[r] = static_cast<int32_t>(n);
      std::memcpy(rows + r * C, x + n * C, static_cast<std::size_t>(C) * sizeof(float));
    }
  }
  if (ep_.size == 1) {
    a.xs.store(rows, a.offsets[E] * C);
    experts_forward(mm, ps, a.offsets.data(), a.xs.operand(), a.h1.data(), a.h3.data(), a.act, a.y.data());
  } else {
    TRI_CHECK(ep_.comm, "expert parallelism ep {} needs a communicator to exchange tokens", ep_.size);
    // Rows per (owner, local expert), then the rows themselves, to the owners.
    a.send_counts.assign(static_cast<std::size_t>(E), 0);
    for (int64_t e = 0; e < E; ++e) a.send_counts[e] = a.offsets[e + 1] - a.offsets[e];
    a.recv_counts.assign(a.send_counts.size(), 0);
    ep_.comm->all_to_all_counts(a.send_counts.data(), a.recv_counts.data(), local_);
    a.owner_offsets.assign(static_cast<std::size_t>(local_ + 1), 0);
    for (int s = 0; s < ep_.size; ++s) {
      for (int l = 0; l < local_; ++l) a.owner_offsets[l + 1] += a.recv_counts[s * local_ + l];
    }
    for (int l = 0; l < local_; ++l) a.owner_offsets[l + 1] += a.owner_offsets[l];
    const int64_t Ro = a.owner_offsets[local_];
    // The exchange buffers (moe_exchange_buffer_floats: one exchange's rows each when routing
    // is balanced, Ro = R).
    const auto width = static_cast<std::size_t>(std::max(moe_exchange_floats(cfg_, N), Ro * C));
    a.ensure(a.ex, width);
    a.ensure(a.yo, width);
    a.ensure(a.xo, Ro * C);
    a.ensure(a.h1, static_cast<std::size_t>(Ro * Il));
    a.ensure(a.h3, static_cast<std::size_t>(Ro * Il));
    a.ensure(a.act, Ro * Il);
    const std::vector<int64_t> sent = exchange_elems(a.send_counts), received = exchange_elems(a.recv_counts);
    if (a.xo.is16()) {
      // w1/w3 read the inputs only as operands, which the engine rounds to 16 bits anyway: the
      // source rounds them (into xs) and sends the words, which the owner keeps as its xo,
      // exactly what it would have made of received fp32 rows. Half the bytes, bitwise.
      a.xs.store(rows, a.offsets[E] * C);
      auto* words = reinterpret_cast<uint16_t*>(a.ex.data());  // ex holds >= Ro * C floats
      ep_.comm->all_to_all_v16(a.xs.bits(), sent, words, received);
      to_expert_major(a, words, a.xo.bits(), C * int64_t{sizeof(uint16_t)});
    } else {
      ep_.comm->all_to_all_v(rows, sent, a.ex.data(), received);
      to_expert_major(a, a.ex.data(), a.xo.target(nullptr), C * int64_t{sizeof(float)});
    }
    experts_forward(mm, ps, a.owner_offsets.data(), a.xo.operand(), a.h1.data(), a.h3.data(), a.act, a.yo.data());
    // The outputs back to their sources, in the order the rows came: a.y as at ep 1.
    to_source_major(a, a.yo.data(), a.ex.data(), C * int64_t{sizeof(float)});
    ep_.comm->all_to_all_v(a.ex.data(), received, a.y.data(), sent);
  }
  kernels::moe_combine_forward(partial, a.y.data(), a.row_of.data(), a.weights.data(), N, K, C);
  // Load-balancing statistics per sequence.
  a.routing_hash = routing_hash(a.experts.data(), a.keep.empty() ? nullptr : a.keep.data(), B, T, K);
  a.seq_counts.resize(static_cast<std::size_t>(B * E));
  a.aux_sum = kernels::moe_sequence_balance(a.seq_counts.data(), a.experts.data(), a.probs.data(), B, T, E, K,
                                            cfg_.scoring == RouterScoring::kSigmoid);
}

void MoeMlp::experts_forward(kernels::MatmulEngine& mm, const ParameterSet& ps, const int64_t* offsets, kernels::ActOperand x,
                             float* h1, float* h3, SavedOperand& act, float* y) const {
  const int64_t C = cfg_.n_embd, Il = cfg_.expert_width() / tp_.size;
  // A 16-bit act is rounded from one expert's fp32 activations at a time (an untracked
  // temporary, like experts_backward's gradients).
  std::vector<float> temp;
  for (int l = 0; l < local_; ++l) {  // none for an expert no token chose
    const int64_t r0 = offsets[l], rows = offsets[l + 1] - r0;
    if (rows == 0) continue;
    const kernels::ActOperand xe = x.at(r0 * C);
    mm.forward_nt(h1 + r0 * Il, xe, ps.data(w1_[l]), rows, C, Il);
    mm.forward_nt(h3 + r0 * Il, xe, ps.data(w3_[l]), rows, C, Il);
    if (act.is16()) temp.resize(static_cast<std::size_t>(rows * Il));
    float* ae = act.is16() ? temp.data() : act.target(nullptr) + r0 * Il;
    kernels::swiglu_forward(ae, h1 + r0 * Il, h3 + r0 * Il, rows * Il);
    if (act.is16()) act.put(r0 * Il, ae, rows * Il);
    mm.forward_nt(y + r0 * C, act.operand().at(r0 * Il), ps.data(w2_[l]), rows, Il, C);
  }
}

void MoeMlp::experts_backward(kernels::MatmulEngine& mm, ParameterSet& ps, const int64_t* offsets, kernels::ActOperand x,
                              const float* h1, const float* h3, kernels::ActOperand act, const float* dy, float* dxr) const {
  const int64_t C = cfg_.n_embd, Il = cfg_.expert_width() / tp_.size;
  std::vector<float> dh1, dh3, tmp, tmp1;
  for (int l = 0; l < local_; ++l) {
    const int64_t r0 = offsets[l], rows = offsets[l + 1] - r0;
    if (rows == 0) continue;
    const kernels::ActOperand xe = x.at(r0 * C);
    dh1.assign(static_cast<std::size_t>(rows * Il), 0.0f);
    dh3.assign(dh1.size(), 0.0f);
    tmp.assign(static_cast<std::size_t>(rows * C), 0.0f);
    tmp1.assign(tmp.size(), 0.0f);
    mm.backward_nt(dh1.data(), ps.grad(w2_[l]), dy + r0 * C, act.at(r0 * Il), ps.data(w2_[l]), rows, Il, C);
    kernels::swiglu_backward(dh1.data(), dh3.data(), dh1.data(), h1 + r0 * Il, h3 + r0 * Il, rows * Il);
    mm.backward_nt(tmp.data(), ps.grad(w3_[l]), dh3.data(), xe, ps.data(w3_[l]), rows, C, Il);
    mm.backward_nt(tmp1.data(), ps.grad(w1_[l]), dh1.data(), xe, ps.data(w1_[l]), rows, C, Il);
    float* d = dxr + r0 * C;
    for (int64_t i = 0; i < rows * C; ++i) d[i] = tmp1[i] + tmp[i];
  }
}

namespace {
// Copies blocks of rows of `row_bytes`: block b of `counts` (rows) moves from row `from_at[b]`
// to row `to_at[b]`.
void move_blocks(const void* from, void* to, const std::vector<int64_t>& counts, const std::vector<int64_t>& from_at,
                 const std::vector<int64_t>& to_at, int64_t row_bytes) {
  const auto* src = static_cast<const char*>(from);
  auto* dst = static_cast<char*>(to);
  for (std::size_t b = 0; b < counts.size(); ++b) {
    std::memcpy(dst + to_at[b] * row_bytes, src + from_at[b] * row_bytes, static_cast<std::size_t>(counts[b] * row_bytes));
  }
}
// Row offsets of block (s, l) of P x El counts laid out source-major and expert-major.
std::pair<std::vector<int64_t>, std::vector<int64_t>> block_starts(const std::vector<int64_t>& counts, int P, int El) {
  std::vector<int64_t> sm(counts.size()), em(counts.size());
  int64_t at = 0;
  for (std::size_t b = 0; b < counts.size(); ++b) sm[b] = at, at += counts[b];
  at = 0;
  for (int l = 0; l < El; ++l) {
    for (int s = 0; s < P; ++s) em[s * El + l] = at, at += counts[s * El + l];
  }
  return {sm, em};
}
}  // namespace

void MoeMlp::to_expert_major(const MoeActivations& a, const void* from, void* to, int64_t row_bytes) const {
  const auto [sm, em] = block_starts(a.recv_counts, ep_.size, local_);
  move_blocks(from, to, a.recv_counts, sm, em, row_bytes);
}

void MoeMlp::to_source_major(const MoeActivations& a, const void* from, void* to, int64_t row_bytes) const {
  const auto [sm, em] = block_starts(a.recv_counts, ep_.size, local_);
  move_blocks(from, to, a.recv_counts, em, sm, row_bytes);
}

std::vector<int64_t> MoeMlp::exchange_elems(const std::vector<int64_t>& row_counts) const {
  std::vector<int64_t> elems(static_cast<std::size_t>(ep_.size), 0);
  for (int s = 0; s < ep_.size; ++s) {
    for (int l = 0; l < local_; ++l) elems[s] += row_counts[s * local_ + l] * cfg_.n_embd;
  }
  return elems;
}

void MoeMlp::backward(kernels::MatmulEngine& mm, ParameterSet& ps, const MoeActivations& a, float* dx, const float* dout, const float* x,
                      int64_t B, int64_t T, const MoeLossWeights& weights) const {
  const int64_t N = B * T, C = cfg_.n_embd, E = cfg_.n_experts, K = cfg_.n_experts_per_tok;
  // Routing-weight gradients <dout_n, y_(n,j)> (partial over tp, as y is: summed below) and
  // d y_(n,j) = w_(n,j) dout_n, in the routed row.
  std::vector<float> dw(static_cast<std::size_t>(N * K));
  kernels::moe_combine_backward(dw.data(), a.dys.data(), dout, a.y.data(), a.row_of.data(), a.weights.data(), N, K, C);
  tp_.allreduce_sum(dw.data(), N * K);
  // Experts backward over their rows: dxr (R, C) receives each routed row's input gradient.
  const int64_t R = a.offsets[E];  // the kept routed rows
  std::vector<float> dxr(static_cast<std::size_t>(R * C));
  if (ep_.size == 1) {
    // Inputs re-gathered into xs: x may be a re-gathered sequence-parallel buffer, so nothing
    // of forward's gather is assumed to survive.
    // A 16-bit xs is rounded from the fp32 rows gathered into dxr (free until experts_backward).
    float* rows = a.xs.target(dxr.data());
    for (int64_t r = 0; r < R; ++r) {
      std::memcpy(rows + r * C, x + static_cast<int64_t>(a.token_of[r]) * C, static_cast<std::size_t>(C) * sizeof(float));
    }
    a.xs.store(rows, R * C);
    experts_backward(mm, ps, a.offsets.data(), a.xs.operand(), a.h1.data(), a.h3.data(), a.act.operand(), a.dys.data(),
                     dxr.data());
  } else {
    // The conjugate exchange: output gradients to the owners (the forward's counts), input
    // gradients back. The owner's input rows are the ones it received in forward (a.xo).
    const std::vector<int64_t> sent = exchange_elems(a.send_counts), received = exchange_elems(a.recv_counts);
    ep_.comm->all_to_all_v(a.dys.data(), sent, a.ex.data(), received);
    to_expert_major(a, a.ex.data(), a.yo.data(), C * int64_t{sizeof(float)});
    std::vector<float> dxo(static_cast<std::size_t>(a.owner_offsets[local_] * C));
    experts_backward(mm, ps, a.owner_offsets.data(), a.xo.operand(), a.h1.data(), a.h3.data(), a.act.operand(), a.yo.data(),
                     dxo.data());
    to_source_major(a, dxo.data(), a.ex.data(), C * int64_t{sizeof(float)});
    ep_.comm->all_to_all_v(a.ex.data(), received, dxr.data(), sent);
  }
  // Scatter-add in expert order: each token's k input gradients are summed in a fixed order.
  kernels::moe_scatter_add_rows(dx, dxr.data(), a.token_of.data(), R, N, C);
  // Router: routing weights -> probabilities (+ the aux loss) -> logits -> Wr and x.
  std::vector<double> dlogit(static_cast<std::size_t>(N * E));
  kernels::moe_router_logit_grad(dlogit.data(), a.probs.data(), a.experts.data(), dw.data(), a.weights.data(),
                                 a.seq_counts.data(), a.lse.data(), N, T, E, K,
                                 kernels::RouterRule{.normalized = cfg_.norm_topk_prob,
                                                     .sigmoid = cfg_.scoring == RouterScoring::kSigmoid,
                                                     .scale = cfg_.routed_scaling_factor},
                                 static_cast<double>(weights.aux), static_cast<double>(weights.z));
  // The input gradient is summed over tp: only tp rank 0 adds the router's.
  kernels::moe_router_backward_products(ps.grad(router_), tp_.rank == 0 ? dx : nullptr, dlogit.data(), x,
                                        ps.data(router_), N, E, C);
}

}  // namespace trident::nn
