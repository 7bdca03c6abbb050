// Discrete-event dry run of pipeline instruction lists, and the timeline printers.
#include "parallel/pipeline/simulator.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "core/check.h"

namespace trident::pp {

double Timeline::busy(int rank) const {
  double b = 0.0;
  for (const TimelineEvent& e : ranks.at(static_cast<std::size_t>(rank))) b += e.end - e.start;
  return b;
}

double Timeline::idle_fraction(int rank) const {
  return step_time > 0 ? 1.0 - busy(rank) / step_time : 0.0;
}

double Timeline::mean_idle_fraction() const {
  if (ranks.empty()) return 0.0;
  double sum = 0.0;
  for (std::size_t r = 0; r < ranks.size(); ++r) sum += idle_fraction(static_cast<int>(r));
  return sum / static_cast<double>(ranks.size());
}

std::string Timeline::ascii(int width) const {
  std::string out;
  const double dt = step_time > 0 ? step_time / width : 1.0;
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    std::string row(static_cast<std::size_t>(width), '.');
    for (const TimelineEvent& e : ranks[r]) {
      // Every column whose centre lies inside the event; at least one column per event.
      int first = static_cast<int>(e.start / dt + 0.5);
      int last = static_cast<int>(e.end / dt + 0.5) - 1;
      first = std::clamp(first, 0, width - 1);
      last = std::clamp(std::max(last, first), 0, width - 1);
      const char ch = e.op == Op::kForward ? static_cast<char>('0' + e.mb % 10)
                                           : static_cast<char>('a' + e.mb % 26);
      for (int c = first; c <= last; ++c) row[static_cast<std::size_t>(c)] = ch;
    }
    out += fmt::format("rank {:>2} |{}|\n", r, row);
  }
  out += fmt::format("(digit = forward of that micro-batch, letter = backward: a = 0, b = 1, ...;"
                     " '.' idle; {} per column{})\n",
                     dt, virtual_stages > 1 ? "; chunks not distinguished" : "");
  return out;
}

std::string Timeline::svg(double px_per_unit) const {
  const double row_h = 24.0, left = 60.0;
  if (px_per_unit <= 0) px_per_unit = step_time > 0 ? 1000.0 / step_time : 1.0;
  const double w = left + step_time * px_per_unit + 10;
  const double h = row_h * static_cast<double>(ranks.size()) + 10;
  std::string out = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0f}\" height=\"{:.0f}\" "
      "font-family=\"monospace\" font-size=\"11\">\n", w, h);
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    const double y = 5 + row_h * static_cast<double>(r);
    out += fmt::format("<text x=\"4\" y=\"{:.1f}\">rank {}</text>\n", y + 16, r);
    for (const TimelineEvent& e : ranks[r]) {
      const double x = left + e.start * px_per_unit, ew = (e.end - e.start) * px_per_unit;
      const char* fill = e.op == Op::kForward ? "#6fa8dc" : "#93c47d";
      out += fmt::format(
          "<rect x=\"{:.2f}\" y=\"{:.1f}\" width=\"{:.2f}\" height=\"{:.1f}\" fill=\"{}\" "
          "stroke=\"#333\" stroke-width=\"0.5\"/>"
          "<text x=\"{:.2f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}{}</text>\n",
          x, y, ew, row_h - 4, fill, x + ew / 2, y + 15, e.op == Op::kForward ? 'F' : 'B', e.mb);
    }
  }
  out += "</svg>\n";
  return out;
}

double CostModel::forward_cost(int rank, int chunk) const {
  if (forward_by_chunk.empty()) return forward;
  return forward_by_chunk.at(static_cast<std::size_t>(rank)).at(static_cast<std::size_t>(chunk));
}

double CostModel::backward_cost(int rank, int chunk) const {
  if (backward_by_chunk.empty()) return backward;
  return backward_by_chunk.at(static_cast<std::size_t>(rank)).at(static_cast<std::size_t>(chunk));
}

std::string SimResult::summary() const {
  std::string out = fmt::format("step time {:.4g}\n  rank   busy        bubble  peak live\n",
                                step_time);
  for (std::size_t r = 0; r < busy.size(); ++r) {
    out += fmt::format("  {:>4}   {:<10.4g}  {:>5.1f}%  {:>9}\n", r, busy[r], 100.0 * bubble[r],
                       peak_live[r]);
  }
  return out;
}

namespace {

enum MsgKind { kAct = 0, kGrad = 1 };
// (kind, micro-batch, destination global chunk)
using MsgKey = std::tuple<int, int, int>;

std::string all_lists(const ScheduleSpec& spec, const std::vector<std::vector<Instruction>>& lists,
                      const std::vector<std::size_t>& pc) {
  std::string out;
  for (std::size_t r = 0; r < lists.size(); ++r) {
    const int mark = pc[r] < lists[r].size() ? static_cast<int>(pc[r]) : -1;
    out += fmt::format("\n  rank {}: {}", r, format_schedule(lists[r], spec.virtual_stages, false, mark));
  }
  return out;
}

}  // namespace

SimResult simulate(const ScheduleSpec& spec, const std::vector<std::vector<Instruction>>& lists,
                   const CostModel& costs) {
  SimResult res;
  const int P = spec.pp, V = spec.virtual_stages, S = spec.num_chunks(), M = spec.micro_batches;
  if (static_cast<int>(lists.size()) != P) {
    res.error = fmt::format("{} instruction lists for pp {}", lists.size(), P);
    return res;
  }
  std::vector<std::size_t> pc(static_cast<std::size_t>(P), 0);
  std::vector<double> t(static_cast<std::size_t>(P), 0.0);
  std::vector<int> live(static_cast<std::size_t>(P), 0);
  res.peak_live.assign(static_cast<std::size_t>(P), 0);
  res.busy.assign(static_cast<std::size_t>(P), 0.0);
  res.timeline.virtual_stages = V;
  res.timeline.ranks.assign(static_cast<std::size_t>(P), {});
  std::map<MsgKey, double> sent;             // arrival time of each message sent
  std::set<MsgKey> received;                 // consumed messages
  // Per rank: (mb, chunk) state: 0 nothing, 1 forwarded, 2 backwarded.
  std::vector<std::map<std::pair<int, int>, int>> state(static_cast<std::size_t>(P));
  std::map<int, double> tied_arrival;        // rank -> time it reached ReduceTiedGrads

  auto invalid = [&](int r, const std::string& why) {
    res.ok = false;
    res.error = fmt::format("invalid schedule ({}): rank {} instruction #{} {}: {}{}", spec.describe(),
                            r, pc[static_cast<std::size_t>(r)],
                            to_string(lists[static_cast<std::size_t>(r)][pc[static_cast<std::size_t>(r)]], V),
                            why, all_lists(spec, lists, pc));
    return res;
  };

  for (bool progress = true; progress;) {
    progress = false;
    for (int r = 0; r < P; ++r) {
      const auto ru = static_cast<std::size_t>(r);
      const auto& list = lists[ru];
      while (pc[ru] < list.size()) {
        const Instruction& ins = list[pc[ru]];
        const int s = r + ins.chunk * P;
        if (ins.op != Op::kEnd && ins.op != Op::kReduceTiedGrads &&
            (ins.mb < 0 || ins.mb >= M || ins.chunk < 0 || ins.chunk >= V)) {
          return invalid(r, fmt::format("micro-batch or chunk out of range (M={}, V={})", M, V));
        }
        const std::pair<int, int> key{ins.mb, ins.chunk};
        bool blocked = false;
        switch (ins.op) {
          case Op::kForward: {
            if (state[ru].count(key)) return invalid(r, "second forward of this micro-batch");
            if (s > 0 && !received.count({kAct, ins.mb, s})) {
              return invalid(r, "forward before its activation was received");
            }
            const double d = costs.forward_cost(r, ins.chunk);
            res.timeline.ranks[ru].push_back({Op::kForward, ins.mb, ins.chunk, t[ru], t[ru] + d});
            t[ru] += d;
            res.busy[ru] += d;
            state[ru][key] = 1;
            res.peak_live[ru] = std::max(res.peak_live[ru], ++live[ru]);
            break;
          }
          case Op::kBackward: {
            auto it = state[ru].find(key);
            if (it == state[ru].end() || it->second != 1) {
              return invalid(r, it == state[ru].end() ? "backward before its forward"
                                                      : "second backward of this micro-batch");
            }
            if (s < S - 1 && !received.count({kGrad, ins.mb, s})) {
              return invalid(r, "backward before its output gradient was received");
            }
            const double d = costs.backward_cost(r, ins.chunk);
            res.timeline.ranks[ru].push_back({Op::kBackward, ins.mb, ins.chunk, t[ru], t[ru] + d});
            t[ru] += d;
            res.busy[ru] += d;
            it->second = 2;
            --live[ru];
            break;
          }
          case Op::kSendActivation:
          case Op::kSendGrad: {
            const bool act = ins.op == Op::kSendActivation;
            auto it = state[ru].find(key);
            if (it == state[ru].end() || it->second != (act ? 1 : 2)) {
              return invalid(r, act ? "sends an activation it has not computed"
                                    : "sends a gradient it has not computed");
            }
            const int dest = act ? s + 1 : s - 1;
            if (dest < 0 || dest >= S || ins.peer != dest % P) {
              return invalid(r, fmt::format("wrong peer {} (stage {} is on rank {})", ins.peer,
                                            dest, dest < 0 || dest >= S ? -1 : dest % P));
            }
            MsgKey m{act ? kAct : kGrad, ins.mb, dest};
            if (sent.count(m)) return invalid(r, "message sent twice");
            sent[m] = t[ru] + costs.comm;
            break;
          }
          case Op::kRecvActivation:
          case Op::kRecvGrad: {
            const bool act = ins.op == Op::kRecvActivation;
            const int src = act ? s - 1 : s + 1;
            if (src < 0 || src >= S || ins.peer != src % P) {
              return invalid(r, fmt::format("wrong peer {} for a message from stage {}", ins.peer, src));
            }
            MsgKey m{act ? kAct : kGrad, ins.mb, s};
            auto it = sent.find(m);
            if (it == sent.end()) {
              blocked = true;
              break;
            }
            if (!received.insert(m).second) return invalid(r, "message received twice");
            t[ru] = std::max(t[ru], it->second);
            break;
          }
          case Op::kReduceTiedGrads: {
            if (ins.peer < 0 || ins.peer >= P || ins.peer == r) return invalid(r, "bad peer");
            tied_arrival.emplace(r, t[ru]);
            auto other = tied_arrival.find(ins.peer);
            if (other == tied_arrival.end()) {
              blocked = true;
              break;
            }
            t[ru] = std::max(tied_arrival[r], other->second) + costs.tied;
            break;
          }
          case Op::kEnd:
            break;
        }
        if (blocked) break;
        ++pc[ru];
        progress = true;
      }
    }
  }

  std::string stuck;
  for (int r = 0; r < P; ++r) {
    const auto ru = static_cast<std::size_t>(r);
    if (pc[ru] >= lists[ru].size()) continue;
    const Instruction& ins = lists[ru][pc[ru]];
    stuck += fmt::format("{}rank {} at #{} {} (waiting for rank {})", stuck.empty() ? "" : "; ", r,
                         pc[ru], to_string(ins, V), ins.peer);
  }
  if (!stuck.empty()) {
    res.error = fmt::format("deadlock in {}: {}{}", spec.describe(), stuck, all_lists(spec, lists, pc));
    return res;
  }
  // Every (mb, chunk) ran forward and backward on every rank.
  for (int r = 0; r < P; ++r) {
    for (int c = 0; c < V; ++c) {
      for (int mb = 0; mb < M; ++mb) {
        auto it = state[static_cast<std::size_t>(r)].find({mb, c});
        if (it == state[static_cast<std::size_t>(r)].end() || it->second != 2) {
          res.error = fmt::format("invalid schedule ({}): rank {} never ran {} of micro-batch {} "
                                  "chunk {}{}", spec.describe(), r,
                                  it == state[static_cast<std::size_t>(r)].end() ? "forward" : "backward",
                                  mb, c, all_lists(spec, lists, pc));
          return res;
        }
      }
    }
  }
  if (sent.size() != received.size()) {
    res.error = fmt::format("invalid schedule ({}): {} messages sent but {} received",
                            spec.describe(), sent.size(), received.size());
    return res;
  }
  res.ok = true;
  res.step_time = *std::max_element(t.begin(), t.end());
  res.timeline.step_time = res.step_time;
  for (int r = 0; r < P; ++r) {
    const auto ru = static_cast<std::size_t>(r);
    res.bubble.push_back(res.step_time > 0 ? 1.0 - res.busy[ru] / res.step_time : 0.0);
  }
  return res;
}

SimResult simulate(const ScheduleSpec& spec, const CostModel& costs) {
  return simulate(spec, build_all_schedules(spec), costs);
}

}  // namespace trident::pp
