// Layout enumeration for the planner (see layout.h).
#include "plan/layout.h"

#include <fmt/format.h>

#include "core/check.h"
#include "nn/lora.h"
#include "parallel/pipeline/partition.h"
#include "quant/packed_base.h"

namespace trident::plan {

std::string Layout::shape() const {
  return fmt::format("dp{} tp{} pp{}", dp, tp, pp) + (ep > 1 ? fmt::format(" ep{}", ep) : "");
}

std::string Layout::schedule_name() const {
  if (pp == 1) return "-";
  if (schedule == pp::ScheduleKind::kInterleaved) return fmt::format("interleaved V={}", virtual_stages);
  return pp::to_string(schedule);
}

std::string Layout::train_flags() const {
  std::string s = fmt::format("--dp {} --tp {} --pp {} --zero {}", dp, tp, pp, zero);
  if (pp > 1) s += fmt::format(" --schedule {}", pp::to_string(schedule));
  s += fmt::format(" --micro-batches {}", micro_batches);
  if (virtual_stages > 1) s += fmt::format(" --virtual-stages {}", virtual_stages);
  if (sequence_parallel) s += " --sequence-parallel";
  if (ep > 1) s += fmt::format(" --ep {}", ep);
  if (offload) s += offload_params && zero >= 3 ? " --offload optimizer+params" : " --offload optimizer";
  return s;
}

void validate_request(const PlanRequest& r) {
  r.model.validate();
  TRI_CHECK(r.world >= 1, "the world size must be at least 1 rank, got {}; pass --world N", r.world);
  TRI_CHECK(r.batch_size >= 1, "the batch size must be at least 1 sequence, got {}", r.batch_size);
  TRI_CHECK(r.seq_len >= 1 && r.seq_len <= r.model.n_positions,
            "the sequence length {} must be between 1 and the model's n_positions {}", r.seq_len,
            r.model.n_positions);
  TRI_CHECK(r.micro_batches >= 0, "--micro-batches must be >= 0 (0: try every divisor), got {}",
            r.micro_batches);
  TRI_CHECK(r.memory_per_rank >= 0, "--memory-per-rank must be >= 0 bytes (0: unlimited), got {}",
            r.memory_per_rank);
}

namespace {

std::vector<int> divisors(int64_t n) {
  std::vector<int> d;
  for (int64_t i = 1; i <= n; ++i) {
    if (n % i == 0) d.push_back(static_cast<int>(i));
  }
  return d;
}

// The engine's and pipeline's own checks, as a reason string ("" when valid).
std::string pipeline_reason(const nn::ModelConfig& m, const Layout& l) {
  try {
    pp::ScheduleSpec spec{l.schedule, l.pp, l.micro_batches, l.virtual_stages};
    spec.validate();
    pp::partition_layers(m.n_layer, {l.pp, l.virtual_stages});
  } catch (const Error& e) {
    return e.what();
  }
  return {};
}

}  // namespace

std::vector<Candidate> enumerate_layouts(const PlanRequest& r) {
  validate_request(r);
  const nn::ModelConfig& m = r.model;
  std::vector<Candidate> out;
  auto reject = [&](Layout l, std::string why) { out.push_back({l, false, std::move(why)}); };
  for (int pp : divisors(r.world)) {
    for (int tp : divisors(r.world / pp)) {
      Layout base;
      base.pp = pp, base.tp = tp, base.dp = r.world / (pp * tp);
      base.sequence_parallel = r.sequence_parallel && tp > 1;
      if (m.n_head % tp != 0) {
        reject(base, fmt::format("tp {} does not divide n_head {} (each rank holds whole heads)", tp, m.n_head));
        continue;
      }
      if ((4 * static_cast<int64_t>(m.n_embd)) % tp != 0) {
        reject(base, fmt::format("tp {} does not divide the MLP width 4*n_embd = {}", tp, 4 * m.n_embd));
        continue;
      }
      if (pp > m.n_layer) {
        reject(base, fmt::format("pp {} has more stages than the model's {} layers", pp, m.n_layer));
        continue;
      }
      if (r.batch_size % base.dp != 0) {
        reject(base, fmt::format("batch size {} does not split over dp {}", r.batch_size, base.dp));
        continue;
      }
      if (m.lora.enabled()) {  // adapters split as their bases (nn/lora.h): the engine's own check
        try {
          nn::check_lora_tensor_parallel(m, tp);
          quant::check_packed_tp_split(m, tp);  // QLoRA q4: whole groups per rank, as the run's load checks
        } catch (const Error& e) {
          reject(base, e.what());
          continue;
        }
      }
      const int64_t rank_batch = r.batch_size / base.dp;
      std::vector<int> ms = r.micro_batches > 0 ? std::vector<int>{r.micro_batches} : divisors(rank_batch);
      for (int M : ms) {
        Layout lm = base;
        lm.micro_batches = M;
        if (rank_batch % M != 0) {
          reject(lm, fmt::format("the {} sequences per dp rank do not split into {} micro-batches",
                                 rank_batch, M));
          continue;
        }
        std::vector<std::pair<pp::ScheduleKind, int>> schedules;
        if (pp == 1) {
          schedules = {{pp::ScheduleKind::kOneFOneB, 1}};
        } else {
          schedules = {{pp::ScheduleKind::kGPipe, 1}, {pp::ScheduleKind::kOneFOneB, 1},
                       {pp::ScheduleKind::kInterleaved, 2}};
        }
        for (auto [kind, V] : schedules) {
          Layout ls = lm;
          ls.schedule = kind, ls.virtual_stages = V;
          if (pp > 1) {
            const std::string why = pipeline_reason(m, ls);
            if (!why.empty()) {
              reject(ls, why);
              continue;
            }
          }
          // One dp rank: ZeRO changes nothing, except that --offload optimizer+params needs
          // stage 3 (the parameter shard, there the whole model, is what goes to disk), and that
          // 16-bit gradients under a pipeline need stage 2 or 3 (the engine refuses 0-1 there).
          const bool grad16_pp = r.grad_dtype != parallel::GradDType::kFp32 && pp > 1;
          for (int zero = 0; zero <= (base.dp > 1 || r.offload_params || grad16_pp ? 3 : 0); ++zero) {
            if (base.dp == 1 && zero > 0 && zero < 3 && !(grad16_pp && zero == 2)) continue;
            Layout lz = ls;
            lz.zero = zero;
            if (grad16_pp && zero < 2) {
              reject(lz, fmt::format("--grad-dtype {} at ZeRO {} is not implemented under a pipeline (use ZeRO 2 or 3)",
                                     parallel::grad_dtype_names()[static_cast<std::size_t>(r.grad_dtype)], zero));
              continue;
            }
            out.push_back({lz, true, {}});
          }
          // Expert parallelism, out of dp, for a mixture of experts: every ep > 1 dividing dp
          // and the experts, with every ZeRO stage (parallel/zero.h: dense state sharded over
          // dp, expert state over edp = dp / ep).
          if (!m.is_moe()) continue;
          for (int ep : divisors(base.dp)) {
            if (ep == 1) continue;
            Layout le = ls;
            le.ep = ep;
            if (m.n_experts % ep != 0) {
              reject(le, fmt::format("ep {} does not divide the {} experts of each layer", ep, m.n_experts));
              continue;
            }
            for (int zero = 0; zero <= 3; ++zero) {
              le.zero = zero;
              if (grad16_pp && zero < 2) {
                reject(le, fmt::format("--grad-dtype {} at ZeRO {} is not implemented under a pipeline (use ZeRO 2 or 3)",
                                       parallel::grad_dtype_names()[static_cast<std::size_t>(r.grad_dtype)], zero));
                continue;
              }
              out.push_back({le, true, {}});
            }
          }
        }
      }
    }
  }
  return out;
}

}  // namespace trident::plan
