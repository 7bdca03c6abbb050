// Ranking and printing of the planner's predictions (see planner.h).
#include "plan/planner.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "core/check.h"
#include "core/memory.h"
#include "parallel/zero_master.h"

namespace trident::plan {

int Plan::fitting() const {
  return static_cast<int>(std::count_if(rows.begin(), rows.end(), [](const PlanRow& r) { return r.fits; }));
}

PlanRow predict_layout(const PlanRequest& req, const Layout& l, ComputeModel& compute,
                       const MachineModel& machine) {
  PlanRow row;
  row.layout = l;
  row.layout.offload = l.offload || req.offload_optimizer;
  row.layout.offload_params = row.layout.offload && l.zero >= 3 && (l.offload_params || req.offload_params);
  row.memory = predict_memory(req, row.layout);
  row.step = predict_step(req, l, compute, machine);
  row.fits = req.memory_per_rank <= 0 || row.memory.worst().total() <= req.memory_per_rank;
  return row;
}

Plan make_plan(const PlanRequest& req, ComputeModel& compute, const MachineModel& machine) {
  Plan plan;
  for (const Candidate& c : enumerate_layouts(req)) {
    if (!c.valid) {
      plan.rejected.push_back(c);
      continue;
    }
    PlanRow row = predict_layout(req, c.layout, compute, machine);
    // At one dp rank the layout is ZeRO 0, which in bf16/fp16 keeps the fp32 values in memory
    // when the optimizer is offloaded; ZeRO 1 there is the same math with the fp32 master on
    // disk too (parallel/zero_master.h), and no slower: an offloaded one-rank layout takes it
    // where it is smaller.
    auto master_on_disk = [&](PlanRow& r) {
      if (!r.layout.offload || r.layout.zero != 0 || c.layout.dp != 1 || c.layout.ep != 1 ||
          !parallel::shards_master(1, req.precision, req.model.lora.enabled())) {
        return;
      }
      Layout z1 = r.layout;
      z1.zero = 1;
      PlanRow one = predict_layout(req, z1, compute, machine);
      if (one.memory.worst().total() < r.memory.worst().total()) r = std::move(one);
    };
    master_on_disk(row);
    // Offload only where it is the way to fit: it never makes a step faster. Kept only when
    // it shrinks the layout (its staging blocks can outweigh a small model's moments).
    if (!row.fits && req.offload_auto && machine.disk.known()) {
      Layout offloaded = c.layout;
      offloaded.offload = true;
      PlanRow off = predict_layout(req, offloaded, compute, machine);
      master_on_disk(off);
      if (off.memory.worst().total() < row.memory.worst().total()) row = std::move(off);
      // Still too big at ZeRO 3: the parameter shard to disk as well (the slowest way to fit).
      // At one dp rank the layout is ZeRO 0 (in memory the stages change nothing there), but the
      // parameter offload needs stage 3, whose shard is then the whole model: tried as ZeRO 3.
      if (!row.fits && (c.layout.zero >= 3 || (c.layout.dp == 1 && c.layout.ep == 1))) {
        offloaded.zero = 3;
        offloaded.offload_params = true;
        PlanRow params = predict_layout(req, offloaded, compute, machine);
        if (params.memory.worst().total() < row.memory.worst().total()) row = std::move(params);
      }
    }
    plan.rows.push_back(row);
  }
  TRI_CHECK(!plan.rows.empty(),
            "no layout of {} ranks is valid for this model and batch (batch {}, seq {}); see the "
            "reasons with a world size that has valid layouts, or change --batch-size/--micro-batches",
            req.world, req.batch_size, req.seq_len);
  std::stable_sort(plan.rows.begin(), plan.rows.end(), [](const PlanRow& a, const PlanRow& b) {
    if (a.fits != b.fits) return a.fits;
    if (a.fits) return a.step.tokens_per_s > b.step.tokens_per_s;
    return a.memory.worst().total() < b.memory.worst().total();
  });
  if (plan.fitting() == 0) {
    const PlanRow& s = plan.rows.front();
    const bool offloads = s.layout.offload;
    // Offload's requirement when no row offloads: the smallest layout offloaded.
    std::string offload_note;
    if (!offloads) {
      double need = -1;
      for (const PlanRow& r : plan.rows) {
        Layout o = r.layout;
        o.offload = true;
        const double t = predict_memory(req, o).worst().total();
        if (need < 0 || t < need) need = t;
      }
      const bool tried = req.offload_auto && machine.disk.known();
      std::string why;
      if (need > s.memory.worst().total()) {
        why = " (its staging blocks outweigh the moments: lower --offload-block-kib)";
      } else if (need <= req.memory_per_rank && !tried) {
        why = " (it fits: plan with --offload-dir DIR, the disk the run offloads to, so the planner can price it)";
      }
      offload_note = fmt::format("; with --offload optimizer the smallest would need {}{}", format_bytes(need), why);
    }
    TRI_FAIL("no layout of {} ranks fits in {} per rank: the smallest needs {} ({} zero {}{}, "
             "M={}{}){}; raise --memory-per-rank, use more ranks, or shrink --batch-size/--seq-len",
             req.world, format_bytes(req.memory_per_rank), format_bytes(s.memory.worst().total()),
             s.layout.shape(), s.layout.zero,
             s.layout.pp > 1 ? fmt::format(" {}", s.layout.schedule_name()) : std::string(), s.layout.micro_batches,
             !offloads ? "" : s.layout.offload_params ? ", even with --offload optimizer+params" : ", even with --offload optimizer",
             offload_note);
  }
  return plan;
}

std::string format_plan(const Plan& plan, const PlanRequest& req, const FormatOptions& opt) {
  const double MiB = 1024.0 * 1024.0;
  std::string out;
  const int64_t tokens = req.batch_size * req.seq_len;
  out += fmt::format("{} layouts valid, {} fit{}; global batch {} x {} = {} tokens per step\n",
                     plan.rows.size(), plan.fitting(),
                     req.memory_per_rank > 0 ? fmt::format(" in {} per rank", format_bytes(req.memory_per_rank))
                                             : std::string(" (no memory limit)"),
                     req.batch_size, req.seq_len, tokens);
  out += fmt::format("{:>3}  {:<16} {:>4} {:<15} {:>3}  {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}  {:>9} {:>9} {:>7}  {:<5} {}\n",
                     "#", "layout", "zero", "schedule", "M", "params", "grads", "optim", "acts",
                     "work", "total MiB", "step ms", "tokens/s", "bubble", "bound", "offload");
  std::set<std::tuple<int, int, int, int, int, int, int>> seen;
  int shown = 0, index = 0;
  for (const PlanRow& r : plan.rows) {
    ++index;
    const Layout& l = r.layout;
    if (!opt.all) {
      auto key = std::make_tuple(l.dp, l.tp, l.pp, l.ep, l.zero, static_cast<int>(l.schedule), l.virtual_stages);
      if (!seen.insert(key).second) continue;
    }
    if (opt.top > 0 && shown >= opt.top) break;
    ++shown;
    const MemoryBreakdown& m = r.memory.worst();
    out += fmt::format("{:>3}  {:<16} {:>4} {:<15} {:>3}  {:>8.1f} {:>8.1f} {:>8.1f} {:>8.1f} {:>8.1f} {:>9.1f}  {:>9.1f} {:>9.0f} {:>6.1f}%  {:<5} {}{}\n",
                       r.fits ? fmt::format("{}", index) : std::string("-"), l.shape(), l.zero,
                       l.schedule_name(), l.micro_batches, m.params / MiB, m.grads / MiB,
                       m.optimizer / MiB, m.activations / MiB, m.workspace / MiB, m.total() / MiB,
                       r.step.step_s * 1e3, r.step.tokens_per_s, 100 * r.step.bubble,
                       r.step.shared_bound() ? "cores" : "path",
                       !l.offload ? std::string("-")
                       : l.offload_params && l.zero >= 3
                           ? fmt::format("disk+params {:.1f} + {:.1f} ms ({:.1f} waited)", r.step.offload_s * 1e3,
                                         r.step.param_read_s * 1e3, r.step.param_stall_s * 1e3)
                           : fmt::format("disk {:.1f} ms", r.step.offload_s * 1e3),
                       r.fits ? "" : "  (does not fit)");
  }
  if (shown < static_cast<int>(plan.rows.size())) {
    out += fmt::format("({} more rows: {})\n", static_cast<int>(plan.rows.size()) - shown,
                       opt.all ? "raise --top" : "--all shows every micro-batch count");
  }
  out += "memory: the worst pipeline rank, peak during the step; bound: 'cores' = total CPU work / "
         "cores (ranks share cores), 'path' = pipeline critical path + exposed communication\n";
  if (std::any_of(plan.rows.begin(), plan.rows.end(), [](const PlanRow& r) { return r.layout.offload; })) {
    out += "offload 'disk': the row runs --offload optimizer (proposed only where the layout does not fit "
           "without it, or asked for); optim is then the resident staging, the AdamW moments (in bf16/fp16 "
           "at ZeRO 1-2 also the fp32 master) are on disk, not in total; the step's update takes max(AdamW "
           "compute, the moments' read + write at the "
           "measured disk bandwidth shared by a node's ranks), the disk time shown; 'disk+params': "
           "--offload optimizer+params (ZeRO 3), the parameter shard on disk too (params is then the "
           "groups in flight): the update's disk time + the layers' shard-slice reads' (each group's "
           "before its forward and its backward gather, per micro-batch), of which the first group's read "
           "of each forward and what the disk cannot keep hidden behind the pass's compute (it reads two "
           "groups ahead) is waited for, added to the step\n";
  }
  if (opt.show_rejected && !plan.rejected.empty()) {
    out += "not valid:\n";
    // One line per layout shape (and interleaving): the reason at the largest micro-batch
    // count tried (the one that does not go away with more micro-batches), without the
    // check's source location.
    std::vector<std::string> order;
    std::map<std::string, std::string> why_of;
    for (const Candidate& c : plan.rejected) {
      std::string what = c.layout.shape();
      if (c.layout.pp > 1 && c.layout.schedule == pp::ScheduleKind::kInterleaved) what += " interleaved V=2";
      if (!why_of.count(what)) order.push_back(what);
      std::string why = c.reason;
      if (const auto at = why.rfind(" ["); at != std::string::npos && why.back() == ']') why.resize(at);
      why_of[what] = why;
    }
    for (const std::string& what : order) out += fmt::format("  {}: {}\n", what, why_of[what]);
  }
  return out;
}

}  // namespace trident::plan
