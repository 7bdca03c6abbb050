// Per-rank memory prediction (see memory_model.h).
#include "plan/memory_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <map>
#include <string>

#include "nn/architecture.h"
#include "nn/moe_exchange.h"
#include "optim/adamw.h"
#include "parallel/ddp_reducer.h"  // group_working_elems
#include "parallel/engine_options.h"
#include "parallel/pipeline/partition.h"
#include "parallel/zero.h"
#include "parallel/zero_master.h"
#include "quant/quant_format.h"
#include "quant/quantized_model.h"

namespace trident::plan {
namespace {

class NullTpComm final : public nn::TensorParallelComm {
 public:
  NullTpComm(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void allreduce_sum(float*, int64_t) override {}
  void allreduce_max(float*, int64_t) override {}
  void reduce_scatter_sum(const float* in, float* out, std::span<const int64_t> counts) override {
    int64_t off = 0;
    for (int r = 0; r < rank_; ++r) off += counts[static_cast<std::size_t>(r)];
    std::memcpy(out, in + off, static_cast<std::size_t>(counts[static_cast<std::size_t>(rank_)]) * sizeof(float));
  }
  void all_gather(const float* in, float* out, std::span<const int64_t> counts) override {
    int64_t off = 0;
    for (int r = 0; r < rank_; ++r) off += counts[static_cast<std::size_t>(r)];
    std::memcpy(out + off, in, static_cast<std::size_t>(counts[static_cast<std::size_t>(rank_)]) * sizeof(float));
  }
  void all_gather16(const uint16_t* in, uint16_t* out, std::span<const int64_t> counts) override {
    int64_t off = 0;
    for (int r = 0; r < rank_; ++r) off += counts[static_cast<std::size_t>(r)];
    std::memcpy(out + off, in, static_cast<std::size_t>(counts[static_cast<std::size_t>(rank_)]) * sizeof(uint16_t));
  }

 private:
  int rank_, size_;
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The largest ZeRO shard of a rank's chunks (dp rank 0's, the first of every chunk_counts
// split): without ep all parameters over dp (as ceil(psi / dp)); with ep each chunk's runs of
// dense parameters over dp and of expert parameters over edp = dp / ep, as DataParallel cuts
// them (parallel/zero.h).
int64_t zero_shard_elems(const RankChunks& rc, int64_t dp, int ep) {
  int64_t psi = 0, shard = 0;
  for (const auto& chunk : rc.chunks) {
    psi += chunk->params().total_numel();
    int64_t run = 0;
    bool expert = false;
    for (const nn::ParamInfo& p : chunk->params().infos()) {
      if ((p.expert >= 0) != expert) {
        shard += ceil_div(run, expert ? dp / ep : dp);
        run = 0, expert = p.expert >= 0;
      }
      run += p.numel;
    }
    shard += ceil_div(run, expert ? dp / ep : dp);
  }
  return ep > 1 ? shard : ceil_div(psi, dp);
}

// What a LoRA / QLoRA chunk adds to the formulas above (memory_model.h): the packed base's
// bytes (its slices as the engine's PackedBase keeps them), the fp32 scratch they are
// dequantized into (the largest layer group's packed elements), and the AdamW moments of each
// dp rank (the trained elements of the optimizer ranges that rank's DataParallel hands AdamW).
struct FrozenBaseTerms {
  double packed_bytes = 0, scratch_floats = 0;
  std::vector<int64_t> moments_by_dp_rank;
};

FrozenBaseTerms frozen_base_terms(const nn::Model& chunk, const std::map<std::string, bool>& in_out, int dp,
                                  int ep, int zero) {
  const nn::ModelConfig& m = chunk.config();
  const nn::ParameterSet& ps = chunk.params();
  FrozenBaseTerms t;
  if (m.packed_base()) {
    const quant::Format format = quant::parse_format(m.packed_base_format);
    std::vector<double> group_floats(static_cast<std::size_t>(ps.num_groups()), 0.0);
    for (const nn::ParamInfo& p : ps.infos()) {
      if (!p.packed) continue;
      const bool conv1d = in_out.at(p.name);  // Conv1D [in, out]; the packed matrix is [out, in]
      const int64_t rows = p.local_shape[conv1d ? 1 : 0], cols = p.local_shape[conv1d ? 0 : 1];
      t.packed_bytes += static_cast<double>(quant::packed_matrix_bytes(format, rows, cols, m.packed_base_group));
      group_floats[static_cast<std::size_t>(p.group)] += static_cast<double>(rows * cols);
    }
    for (double g : group_floats) t.scratch_floats = std::max(t.scratch_floats, g);
  }
  // ZeRO >= 1: DataParallel's ranges for dp rank r, from the same layout function (under ep the
  // expert runs are their own segments over edp, which moves the dense cut points; every ep rank
  // holds its experts at the same offsets, so ep rank 0's chunk stands for all).
  for (int r = 0; r < (zero >= 1 ? dp : 1); ++r) {
    const std::vector<parallel::FlatRange> owned =
        zero >= 1 ? parallel::shard_layout_of(ps, r, dp, ep).pieces()
                  : std::vector<parallel::FlatRange>{{0, ps.total_numel()}};
    t.moments_by_dp_rank.push_back(optim::AdamW::moment_count(ps, owned));
  }
  return t;
}

}  // namespace

std::unique_ptr<nn::TensorParallelComm> make_null_tp_comm(int rank, int size) {
  return std::make_unique<NullTpComm>(rank, size);
}

RankChunks build_rank_chunks(const nn::ModelConfig& model, const Layout& layout, int rank,
                             nn::Recompute recompute, kernels::Precision precision) {
  RankChunks rc;
  rc.tp_comm = make_null_tp_comm(0, layout.tp);
  // Expert parallelism: ep rank 0's experts (every ep rank holds as many), no exchange needed
  // to count parameters and activations.
  nn::TpContext tp{0, layout.tp, layout.tp > 1 ? rc.tp_comm.get() : nullptr,
                   layout.sequence_parallel && layout.tp > 1, nn::EpContext{0, layout.ep, nullptr}};
  const pp::Partition part = pp::partition_layers(model.n_layer, {layout.pp, layout.virtual_stages});
  for (int c = 0; c < layout.virtual_stages; ++c) {
    rc.chunks.push_back(std::make_unique<nn::Model>(model, tp, part.chunk(rank, c)));
    rc.chunks.back()->set_recompute(recompute);
    rc.chunks.back()->set_precision(precision);
  }
  return rc;
}

int moe_layer_count(const nn::ModelConfig& model, int layer_begin, int layer_end) {
  const nn::Architecture& arch = nn::architecture(model.family);
  int n = 0;
  for (int layer = layer_begin; layer < layer_end; ++layer) {
    const std::vector<nn::ParamDecl> decls = arch.layer_params(model, layer);
    n += std::any_of(decls.begin(), decls.end(), [](const nn::ParamDecl& d) { return d.expert >= 0; });
  }
  return n;
}

std::vector<int> peak_live_per_chunk(const pp::ScheduleSpec& spec, int rank) {
  std::vector<int> live(static_cast<std::size_t>(spec.virtual_stages), 0), peak = live;
  for (const pp::Instruction& ins : pp::compute_order(spec, rank)) {
    auto c = static_cast<std::size_t>(ins.chunk);
    if (ins.op == pp::Op::kForward) peak[c] = std::max(peak[c], ++live[c]);
    if (ins.op == pp::Op::kBackward) --live[c];
  }
  return peak;
}

MemoryPrediction predict_memory(const PlanRequest& req, const Layout& l) {
  const nn::ModelConfig& m = req.model;
  const int64_t B = req.batch_size / l.dp / l.micro_batches, T = req.seq_len, N = B * T;
  const int64_t C = m.n_embd;
  const int64_t dp = l.dp;
  const pp::ScheduleSpec spec{l.schedule, l.pp, l.micro_batches, l.virtual_stages};
  const double bucket_elems = req.bucket_mb * 1024.0 * 1024.0 / 4.0;
  // Which packed matrices are Conv1D [in, out] (GPT-2), to count a slice's rows and columns.
  std::map<std::string, bool> in_out;
  if (m.packed_base()) {
    for (const nn::ParamDecl& d : quant::declared_params(m)) in_out[d.name] = d.in_out;
  }
  MemoryPrediction out;
  for (int r = 0; r < l.pp; ++r) {
    RankChunks rc = build_rank_chunks(m, l, r, req.recompute, req.precision);
    const std::vector<int> live =
        l.pp > 1 ? peak_live_per_chunk(spec, r) : std::vector<int>(static_cast<std::size_t>(l.virtual_stages), 1);
    int64_t psi = 0, grad_psi = 0, expert_psi = 0, max_param = 0, max_group = 0, working = 0;
    double act_bytes = 0, work_floats = 0, packed_bytes = 0;
    std::vector<int64_t> lora_moments;  // per dp rank, summed over the chunks
    for (std::size_t c = 0; c < rc.chunks.size(); ++c) {
      const nn::Model& g = *rc.chunks[c];
      if (m.lora.enabled()) {
        const FrozenBaseTerms f = frozen_base_terms(g, in_out, l.dp, l.ep, l.zero);
        packed_bytes += f.packed_bytes;
        work_floats += f.scratch_floats;
        lora_moments.resize(f.moments_by_dp_rank.size(), 0);
        for (std::size_t k = 0; k < lora_moments.size(); ++k) lora_moments[k] += f.moments_by_dp_rank[k];
      }
      const nn::ParameterSet& ps = g.params();
      psi += ps.total_numel();
      grad_psi += ps.grad_numel();  // the flat gradient buffer: the trained parameters (LoRA: the adapters)
      working = std::max(working, parallel::group_working_elems(ps));  // ZeRO 0-1, 16-bit gradients
      for (const nn::ParamInfo& p : ps.infos()) {
        max_param = std::max(max_param, p.numel);
        if (p.expert >= 0) expert_psi += p.numel;
      }
      for (int gi = 0; gi < ps.num_groups(); ++gi) {
        max_group = std::max(max_group, ps.group_end(gi) - ps.group_begin(gi));
      }
      // Each live micro-batch's own, plus what the chunk's model holds once (recompute).
      act_bytes += static_cast<double>(live[c]) * static_cast<double>(g.activation_bytes(B, T)) +
                    static_cast<double>(g.recompute_bytes(B, T));
      // The MoE layers' token-exchange buffers (ep > 1), in each layer's activations: per live
      // micro-batch and layer, or in the one rerun layer's under full recompute.
      const nn::StageSpec& st = g.stage();
      const int moe = moe_layer_count(m, st.layer_begin, st.layer_end);
      const double exchange = static_cast<double>(nn::moe_exchange_buffer_bytes(m, l.ep, N, g.operand_storage()));
      act_bytes += (req.recompute == nn::Recompute::kFull ? (moe > 0 ? exchange : 0.0)
                                                              : static_cast<double>(live[c]) * moe * exchange);
      // Model::ensure_scratch: residual grad, shared and layer scratch, vocab-parallel sums.
      double w = static_cast<double>(g.workspace_floats(N));
      // DataParallel's scratch copy of the tied embedding gradient (ZeRO 0/1, embedding and head on
      // one rank): the embedding's part waits there while the head's part is reduced.
      // Not for a frozen embedding (a LoRA base): it has no gradient to reduce.
      const int tied = ps.find_tied();
      // (16-bit gradients bring a reducer at one dp rank too, which makes no scratch there.)
      const bool grad16 = req.grad_dtype != parallel::GradDType::kFp32;
      if ((l.dp > 1 || (l.zero > 0 && !grad16)) && l.zero < 2 && g.stage().has_embedding && g.stage().has_head &&
          nn::has_tied_embedding(m) && tied >= 0 && ps.info(tied).grad_offset >= 0) {
        w += static_cast<double>(m.padded_vocab(l.tp) / l.tp * C);
      }
      work_floats += w;
    }
    MemoryBreakdown mb;
    // ZeRO shards dense state over dp and expert state over edp = dp / ep (parallel/zero.h),
    // each segment split by chunk_counts: the first rank of each holds the ceiling.
    const double shard = static_cast<double>(zero_shard_elems(rc, dp, l.ep));
    const double full = static_cast<double>(psi);
    // Working sets during the step (ZeRO-2/3 buckets: the one reducing and the one filling).
    const double bucket = std::min(full, std::max(bucket_elems, static_cast<double>(max_param)));
    const double gathered = std::min(full, 2.0 * static_cast<double>(max_group));  // ZeRO-3's working set
    mb.params = 4 * (l.zero >= 3 ? shard + gathered : full);
    // bf16: the weight copy the matmuls read, of every element held (ZeRO-3: gathered).
    if (req.precision == kernels::Precision::kBf16) mb.params += 2 * (l.zero >= 3 ? gathered : full);
    // ZeRO-1/2's sharded master (parallel/zero_master.h), as the engine decides it: the 16-bit
    // copy of every element, the value-read parameters' fp32 values, the fp32 master of the
    // operand-only elements of the dp rank's shard (the most any dp rank holds).
    double value_gather = 4 * full;
    const bool offload = req.offload_optimizer || l.offload;
    double master = 0;  // the sharded master's fp32 shard (the most any dp rank holds)
    if (parallel::EngineOptions{}.shard_master && parallel::shards_master(l.zero, req.precision, m.lora.enabled())) {
      double operand = 0;
      for (int r = 0; r < l.dp; ++r) {
        double mine = 0;
        for (const auto& chunk : rc.chunks) {
          const nn::ParameterSet& ps = chunk->params();
          mine += static_cast<double>(parallel::operand_only_elems(ps, parallel::shard_layout_of(ps, r, l.dp, l.ep).pieces()));
        }
        master = std::max(master, mine);
      }
      for (const auto& chunk : rc.chunks) {
        for (const auto& [a, b] : parallel::operand_only_runs(chunk->params())) operand += static_cast<double>(b - a);
      }
      value_gather = 2 * full + 4 * (full - operand);  // the 16-bit copy and the value-read fp32 values
      // --offload optimizer: the shard is the offload file's values part (below), not resident.
      mb.params = value_gather + (offload ? 0.0 : 4 * master);
    }
    // ZeRO 0-1: the flat gradient buffer, the trained parameters only; ZeRO 2-3: the value
    // layout's shard (--grad-dtype: 2 or 4 bytes an element) and its fp32 buckets (which still
    // span a LoRA run's frozen tensors).
    // ZeRO 0-1 with 16-bit gradients: the flat buffer in 2 bytes and the largest layer group's
    // fp32 working buffer (one is live at a time).
    mb.grads = l.zero >= 2 ? parallel::grad_bytes(req.grad_dtype) * shard + 4 * std::min(full, 2.0 * bucket)
               : req.grad_dtype != parallel::GradDType::kFp32
                   ? 2 * static_cast<double>(grad_psi) + 4 * static_cast<double>(working)
                   : 4 * static_cast<double>(grad_psi);
    // A LoRA run's moments are its adapters' (the most any dp rank's shard holds of them).
    const double trained = m.lora.enabled() ? static_cast<double>(*std::max_element(lora_moments.begin(), lora_moments.end()))
                                            : (l.zero >= 1 ? shard : full);
    mb.optimizer = 8 * trained;
    mb.packed_base = packed_bytes;
    if (offload) {
      mb.offloaded = mb.optimizer;
      mb.optimizer = 6.0 * req.offload_block_bytes * static_cast<double>(rc.chunks.size());
      if (master > 0) {  // the sharded master's values part: a third part of each staging block
        mb.offloaded += 4 * master;
        mb.optimizer *= 1.5;
      }
      if ((req.offload_params || l.offload_params) && l.zero >= 3) {
        // The value shard joins the moments on disk (a third part of each staging block); in
        // memory stay the two gathered groups and the shard slices read for the next two (the
        // first rank of a segment holds the ceiling: a group's slice is at most max_group / dp
        // rounded up, widened to whole 4 KiB pages at both ends).
        mb.offloaded += 4 * shard;
        mb.optimizer *= 1.5;
        const double slice = std::ceil(static_cast<double>(max_group) / static_cast<double>(dp)) + 2048;
        mb.params = 4 * (std::min(full, 2.0 * static_cast<double>(max_group)) + 2.0 * slice);
        // bf16: the gathered groups' weight copies, as without the values offloaded.
        if (req.precision == kernels::Precision::kBf16) mb.params += 2 * gathered;
        mb.slice_reads = 2 * 4 * shard;
        mb.first_slice = 4 * std::min(shard, slice);
      }
    }
    mb.activations = act_bytes;
    mb.workspace = 4 * work_floats;
    out.by_pp_rank.push_back(mb);
    out.params_by_pp_rank.push_back(psi);
    out.expert_params_by_pp_rank.push_back(expert_psi);
    out.trained_by_pp_rank.push_back(static_cast<int64_t>(trained));
    out.value_gather_bytes_by_pp_rank.push_back(value_gather);
  }
  for (int r = 0; r < l.pp; ++r) {
    if (out.by_pp_rank[static_cast<std::size_t>(r)].total() > out.worst().total()) out.worst_pp_rank = r;
  }
  return out;
}

}  // namespace trident::plan
