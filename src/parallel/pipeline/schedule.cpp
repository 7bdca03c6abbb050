// GPipe, 1F1B (PipeDream-Flush) and interleaved 1F1B (Narayanan et al. 2021, as Megatron-LM's
// forward_backward_pipelining_with_interleaving orders it) as instruction lists.
#include "parallel/pipeline/schedule.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/check.h"

namespace trident::pp {

namespace {
constexpr std::string_view kKindNames[] = {"gpipe", "1f1b", "interleaved"};
}  // namespace

std::span<const std::string_view> schedule_kind_names() { return kKindNames; }

const char* to_string(ScheduleKind kind) {
  const auto i = static_cast<std::size_t>(kind);
  return i < std::size(kKindNames) ? kKindNames[i].data() : "?";
}

ScheduleKind parse_schedule_kind(std::string_view name) {
  if (name == "gpipe") return ScheduleKind::kGPipe;
  if (name == "1f1b" || name == "1F1B") return ScheduleKind::kOneFOneB;
  if (name == "interleaved") return ScheduleKind::kInterleaved;
  TRI_FAIL("unknown pipeline schedule '{}'; use gpipe, 1f1b or interleaved", name);
}

void ScheduleSpec::validate() const {
  TRI_CHECK(pp >= 1, "pipeline size must be >= 1, got {}", pp);
  TRI_CHECK(micro_batches >= 1, "--micro-batches must be >= 1, got {}", micro_batches);
  TRI_CHECK(virtual_stages >= 1, "--virtual-stages must be >= 1, got {}", virtual_stages);
  if (kind == ScheduleKind::kInterleaved) {
    TRI_CHECK(pp >= 2, "the interleaved schedule needs --pp >= 2, got {}", pp);
    TRI_CHECK(virtual_stages >= 2,
              "the interleaved schedule needs --virtual-stages >= 2 (got {}); with 1 use "
              "--schedule 1f1b",
              virtual_stages);
    TRI_CHECK(micro_batches % pp == 0,
              "the interleaved schedule needs --micro-batches ({}) divisible by --pp ({}) "
              "(Megatron's rule); use a multiple of {} or --schedule 1f1b",
              micro_batches, pp, pp);
  } else {
    TRI_CHECK(virtual_stages == 1,
              "--virtual-stages {} needs --schedule interleaved (the {} schedule runs one chunk "
              "per rank)",
              virtual_stages, to_string(kind));
  }
  // Message tags (executor.cpp): 16 + 2 * (mb * S + stage) + 1 must stay <= 32767.
  TRI_CHECK(int64_t{micro_batches} * num_chunks() <= 16000,
            "micro-batches({}) * pipeline chunks({}) is too large for the message tags "
            "(limit 16000)",
            micro_batches, num_chunks());
}

std::string ScheduleSpec::describe() const {
  if (virtual_stages > 1) {
    return fmt::format("{} pp={} M={} V={}", to_string(kind), pp, micro_batches, virtual_stages);
  }
  return fmt::format("{} pp={} M={}", to_string(kind), pp, micro_batches);
}

namespace {

Instruction fwd(int mb, int chunk) { return {Op::kForward, mb, chunk, -1}; }
Instruction bwd(int mb, int chunk) { return {Op::kBackward, mb, chunk, -1}; }

}  // namespace

std::vector<Instruction> compute_order(const ScheduleSpec& spec, int rank) {
  spec.validate();
  TRI_CHECK(rank >= 0 && rank < spec.pp, "pp rank {} out of range [0, {})", rank, spec.pp);
  const int p = spec.pp, M = spec.micro_batches, V = spec.virtual_stages;
  std::vector<Instruction> out;
  switch (spec.kind) {
    case ScheduleKind::kGPipe:
      for (int mb = 0; mb < M; ++mb) out.push_back(fwd(mb, 0));
      for (int mb = 0; mb < M; ++mb) out.push_back(bwd(mb, 0));
      break;
    case ScheduleKind::kOneFOneB: {
      // PipeDream-Flush: rank r runs p - r - 1 warm-up forwards, then alternates one forward
      // and one backward, then drains the remaining backwards.
      const int warmup = std::min(p - rank - 1, M);
      for (int mb = 0; mb < warmup; ++mb) out.push_back(fwd(mb, 0));
      for (int i = 0; i < M - warmup; ++i) {
        out.push_back(fwd(warmup + i, 0));
        out.push_back(bwd(i, 0));
      }
      for (int i = M - warmup; i < M; ++i) out.push_back(bwd(i, 0));
      break;
    }
    case ScheduleKind::kInterleaved: {
      // Virtual micro-batch k of M * V: groups of p micro-batches go through chunk 0, then
      // chunk 1, ... (forward) and chunk V-1, ..., 0 (backward).
      const int total = M * V;
      auto chunk_of = [&](int k, bool forward) {
        const int c = (k % (p * V)) / p;
        return forward ? c : V - 1 - c;
      };
      auto mb_of = [&](int k) { return (k / (p * V)) * p + k % p; };
      int warmup = (p - rank - 1) * 2 + (V - 1) * p;
      if (M == p) warmup = total;  // Megatron: all forwards first when M == pp
      warmup = std::min(warmup, total);
      for (int k = 0; k < warmup; ++k) out.push_back(fwd(mb_of(k), chunk_of(k, true)));
      for (int k = 0; k < total - warmup; ++k) {
        out.push_back(fwd(mb_of(k + warmup), chunk_of(k + warmup, true)));
        out.push_back(bwd(mb_of(k), chunk_of(k, false)));
      }
      for (int k = total - warmup; k < total; ++k) out.push_back(bwd(mb_of(k), chunk_of(k, false)));
      break;
    }
  }
  return out;
}

std::vector<Instruction> add_communication(const ScheduleSpec& spec, int rank,
                                           const std::vector<Instruction>& compute) {
  const int p = spec.pp, S = spec.num_chunks();
  std::vector<Instruction> out;
  for (const Instruction& ins : compute) {
    const int s = rank + ins.chunk * p;
    if (ins.op == Op::kForward) {
      if (s > 0) out.push_back({Op::kRecvActivation, ins.mb, ins.chunk, (s - 1) % p});
      out.push_back(ins);
      if (s < S - 1) out.push_back({Op::kSendActivation, ins.mb, ins.chunk, (s + 1) % p});
    } else if (ins.op == Op::kBackward) {
      if (s < S - 1) out.push_back({Op::kRecvGrad, ins.mb, ins.chunk, (s + 1) % p});
      out.push_back(ins);
      if (s > 0) out.push_back({Op::kSendGrad, ins.mb, ins.chunk, (s - 1) % p});
    } else {
      out.push_back(ins);
    }
  }
  if (p > 1 && (rank == 0 || rank == p - 1)) {
    out.push_back({Op::kReduceTiedGrads, -1, rank == 0 ? 0 : spec.virtual_stages - 1,
                   rank == 0 ? p - 1 : 0});
  }
  out.push_back({Op::kEnd, -1, 0, -1});
  return out;
}

std::vector<Instruction> build_schedule(const ScheduleSpec& spec, int rank) {
  return add_communication(spec, rank, compute_order(spec, rank));
}

std::vector<std::vector<Instruction>> build_all_schedules(const ScheduleSpec& spec) {
  std::vector<std::vector<Instruction>> all;
  for (int r = 0; r < spec.pp; ++r) all.push_back(build_schedule(spec, r));
  return all;
}

std::string to_string(const Instruction& ins, int virtual_stages) {
  const char* name = "?";
  switch (ins.op) {
    case Op::kForward: name = "F"; break;
    case Op::kBackward: name = "B"; break;
    case Op::kRecvActivation: name = "RA"; break;
    case Op::kSendActivation: name = "SA"; break;
    case Op::kRecvGrad: name = "RG"; break;
    case Op::kSendGrad: name = "SG"; break;
    case Op::kReduceTiedGrads: return "TIED";
    case Op::kEnd: return "END";
  }
  if (virtual_stages > 1) return fmt::format("{}{}.{}", name, ins.mb, ins.chunk);
  return fmt::format("{}{}", name, ins.mb);
}

std::string format_schedule(const std::vector<Instruction>& list, int virtual_stages,
                            bool compute_only, int mark) {
  std::string out;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const Instruction& ins = list[i];
    if (compute_only && ins.op != Op::kForward && ins.op != Op::kBackward &&
        static_cast<int>(i) != mark) {
      continue;
    }
    if (!out.empty()) out += ' ';
    if (static_cast<int>(i) == mark) {
      out += '[' + to_string(ins, virtual_stages) + ']';
    } else {
      out += to_string(ins, virtual_stages);
    }
  }
  return out;
}

}  // namespace trident::pp
