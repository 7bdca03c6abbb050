// Planner vs measurement: for a model on N ranks (default: the `small` preset on 8 ranks of
// this machine), runs `trident train` under scripts/trident-mpirun for a set of layouts, reads
// tokens/s from the metrics JSON lines (the first step, warm-up, dropped) and prints it next
// to the planner's prediction and against the single-process run (one rank with all cores).
// The predictions for the N-rank layouts come from `trident plan` run first under
// scripts/trident-mpirun -n N (--json), i.e. calibrated with all N ranks measuring together
// (plan/calibrate.h); the single-process one from the planner in this process, alone. A layout the engine
// rejects prints "unsupported" with its error. Slow on 2 cores: a few steps each.
//
//   build/bench/plan_vs_measured [--model small] [--world 8] [--steps 3] [--seq-len 128]
//       [--batch-size 8] [--data data/janeausten] [--trident build/trident] [--cores N]
//       [--layouts "dp8;dp4,tp2;dp2,pp4,1f1b;dp4,ep2"]   (default: one per dp x tp x pp shape and,
//       for a mixture of experts, ep split + ZeRO 1/3)
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/check.h"
#include "core/timer.h"
#include "plan/planner.h"

namespace fs = std::filesystem;
using namespace trident;

namespace {

struct Args {
  std::string model = "small", data = "data/janeausten", trident = "build/trident";
  std::string mpirun = "scripts/trident-mpirun", layouts, out_dir = "runs/bench_plan";
  int world = 8, steps = 3, cores = 0;
  int64_t seq = 128, batch = 8;
};

struct Predicted {
  plan::Layout layout;
  double tokens_per_s = 0, memory_bytes = 0;
};

struct Measured {
  bool ok = false;
  std::string error;
  double tokens_per_s = 0, step_ms = 0, peak_mib = 0;
};

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The first line that looks like an error in a failed run's output.
std::string first_error(const std::string& log) {
  std::istringstream in(log);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("rror") != std::string::npos || line.find("not wired") != std::string::npos) {
      return line.substr(0, 160);
    }
  }
  return log.substr(0, 160);
}

Measured run(const Args& a, const std::string& name, const std::string& launcher, const std::string& flags) {
  fs::create_directories(a.out_dir);
  const std::string metrics = a.out_dir + "/" + name + ".jsonl", log = a.out_dir + "/" + name + ".log";
  fs::remove(metrics);
  const std::string cmd = fmt::format(
      "{} {} train --model {} --data {} --seq-len {} --batch-size {} --steps {} --eval-every 0 "
      "--warmup-steps 0 --log-every 1000 --metrics {} {} > {} 2>&1",
      launcher, a.trident, a.model, a.data, a.seq, a.batch, a.steps, metrics, flags, log);
  fmt::print(stderr, "  running {}\n", cmd);
  const int rc = std::system(cmd.c_str());
  Measured m;
  if (rc != 0) {
    m.error = first_error(read_file(log));
    return m;
  }
  std::ifstream f(metrics);
  std::string line;
  double ms = 0, tokens = 0;
  int n = 0;
  while (std::getline(f, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.at("step").get<int>() == 1 && a.steps > 1) continue;  // warm-up
    ms += j.at("step_ms").get<double>();
    tokens += static_cast<double>(a.batch * a.seq);
    m.peak_mib = std::max(m.peak_mib, j.at("memory").at("total").get<double>() / 1048576.0);
    ++n;
  }
  if (n == 0) {
    m.error = "no metrics written";
    return m;
  }
  m.ok = true;
  m.step_ms = ms / n;
  m.tokens_per_s = tokens / (ms / 1e3);
  return m;
}

// "dp2,tp2,pp2,ep2,1f1b,z1,m4,v2,sp" -> Layout (missing M: the planner's best M for the shape).
plan::Layout parse_layout(const std::string& text) {
  plan::Layout l;
  std::istringstream in(text);
  std::string tok;
  l.micro_batches = 0;
  while (std::getline(in, tok, ',')) {
    if (tok.rfind("dp", 0) == 0) l.dp = std::stoi(tok.substr(2));
    else if (tok.rfind("tp", 0) == 0) l.tp = std::stoi(tok.substr(2));
    else if (tok.rfind("pp", 0) == 0) l.pp = std::stoi(tok.substr(2));
    else if (tok.rfind("ep", 0) == 0) l.ep = std::stoi(tok.substr(2));
    else if (tok[0] == 'z') l.zero = std::stoi(tok.substr(1));
    else if (tok[0] == 'm') l.micro_batches = std::stoi(tok.substr(1));
    else if (tok[0] == 'v') l.virtual_stages = std::stoi(tok.substr(1));
    else if (tok == "sp") l.sequence_parallel = true;
    else l.schedule = pp::parse_schedule_kind(tok);
  }
  return l;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") a.model = v;
    else if (k == "--world") a.world = std::stoi(v);
    else if (k == "--steps") a.steps = std::stoi(v);
    else if (k == "--seq-len") a.seq = std::stoll(v);
    else if (k == "--batch-size") a.batch = std::stoll(v);
    else if (k == "--data") a.data = v;
    else if (k == "--trident") a.trident = v;
    else if (k == "--mpirun") a.mpirun = v;
    else if (k == "--layouts") a.layouts = v;
    else if (k == "--cores") a.cores = std::stoi(v);
    else if (k == "--out") a.out_dir = v;
    else {
      fmt::print(stderr, "unknown option {}\n", k);
      return 2;
    }
  }
  const int cores = a.cores > 0 ? a.cores : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  try {
    plan::PlanRequest req;
    req.model = nn::model_preset(a.model);
    req.world = a.world;
    req.batch_size = a.batch;
    req.seq_len = a.seq;
    plan::MachineModel machine;
    machine.cores = cores;
    machine.threads_per_rank = std::max(1, cores / a.world);
    machine.comm.bandwidth = plan::measure_memcpy_bandwidth() / 2;

    // The calibrated plan: all N ranks measure together under mpirun.
    fs::create_directories(a.out_dir);
    const std::string plan_json = a.out_dir + "/plan.jsonl", plan_log = a.out_dir + "/plan.log";
    const std::string plan_cmd = fmt::format(
        "{} -n {} {} plan --model {} --world {} --batch-size {} --seq-len {} --cores {} --all --json {} > {} 2>&1",
        a.mpirun, a.world, a.trident, a.model, a.world, a.batch, a.seq, cores, plan_json, plan_log);
    fmt::print(stderr, "  running {}\n", plan_cmd);
    Stopwatch plan_sw;
    TRI_CHECK(std::system(plan_cmd.c_str()) == 0, "the calibrated planner failed: {}",
              first_error(read_file(plan_log)));
    const double plan_s = plan_sw.seconds();
    std::vector<Predicted> rows;  // rank order
    {
      std::ifstream f(plan_json);
      std::string line;
      while (std::getline(f, line)) {
        const auto j = nlohmann::json::parse(line);
        if (!j.at("fits").get<bool>()) continue;
        Predicted r;
        r.layout.dp = j.at("dp"), r.layout.tp = j.at("tp"), r.layout.pp = j.at("pp");
        r.layout.zero = j.at("zero");
        r.layout.ep = j.value("ep", 1);
        r.layout.schedule = pp::parse_schedule_kind(j.at("schedule").get<std::string>());
        r.layout.virtual_stages = j.at("virtual_stages"), r.layout.micro_batches = j.at("micro_batches");
        r.layout.sequence_parallel = j.at("sequence_parallel");
        r.tokens_per_s = j.at("tokens_per_s"), r.memory_bytes = j.at("memory_bytes");
        rows.push_back(r);
      }
    }
    TRI_CHECK(!rows.empty(), "the calibrated planner wrote no rows to {}", plan_json);

    // Which layouts: given, or per dp x tp x pp shape the best 1F1B (or only) schedule with
    // ZeRO 0 and its best M, plus ZeRO 1 and 3 of the widest dp.
    std::vector<Predicted> layouts;
    auto best_for = [&](plan::Layout want) -> std::optional<Predicted> {
      for (const Predicted& r : rows) {  // ranked: the first match has the best M
        const plan::Layout& l = r.layout;
        if (l.dp == want.dp && l.tp == want.tp && l.pp == want.pp && l.ep == want.ep && l.zero == want.zero &&
            (l.pp == 1 || (l.schedule == want.schedule && l.virtual_stages == want.virtual_stages)) &&
            (want.micro_batches == 0 || l.micro_batches == want.micro_batches) &&
            l.sequence_parallel == want.sequence_parallel) {
          return r;
        }
      }
      return std::nullopt;
    };
    std::vector<plan::Layout> wanted;
    if (!a.layouts.empty()) {
      std::istringstream in(a.layouts);
      std::string item;
      while (std::getline(in, item, ';')) wanted.push_back(parse_layout(item));
    } else {
      std::map<std::tuple<int, int, int, int>, bool> shapes;  // dp, tp, pp, ep (a mixture of experts)
      for (const Predicted& r : rows) shapes[{r.layout.dp, r.layout.tp, r.layout.pp, r.layout.ep}] = true;
      for (const auto& [s, _] : shapes) {
        plan::Layout l;
        l.dp = std::get<0>(s), l.tp = std::get<1>(s), l.pp = std::get<2>(s), l.ep = std::get<3>(s), l.micro_batches = 0;
        wanted.push_back(l);
        if (l.pp > 1) {
          plan::Layout g = l;
          g.schedule = pp::ScheduleKind::kGPipe;
          if (l.dp == 1 && l.tp == 1) wanted.push_back(g);
        }
        if (l.dp == a.world && l.ep == 1) {
          for (int z : {1, 3}) {
            plan::Layout lz = l;
            lz.zero = z;
            wanted.push_back(lz);
          }
        }
      }
    }
    for (const plan::Layout& w : wanted) {
      if (auto l = best_for(w)) {
        layouts.push_back(*l);
      } else {
        fmt::print(stderr, "layout {} is not valid for this model/batch; skipped\n", w.train_flags());
      }
    }

    // Single process, all cores.
    plan::PlanRequest one = req;
    one.world = 1;
    plan::MachineModel m1 = machine;
    m1.threads_per_rank = cores;
    plan::MeasuredComputeModel compute1(req.model, cores);
    const plan::PlanRow single_pred = plan::predict_layout(one, plan::Layout{}, compute1, m1);
    const Measured single = run(a, "single", "", fmt::format("--threads {}", cores));

    fmt::print("\n{} on {} ranks ({} cores), batch {} x seq {}, {} steps (first dropped); "
               "calibrated plan under mpirun -n {} took {:.1f} s, single-process costs {:.1f} s\n",
               a.model, a.world, cores, a.batch, a.seq, a.steps, a.world, plan_s,
               compute1.calibration_seconds());
    fmt::print("{:<42} {:>10} {:>10} {:>8} {:>9} {:>10} {:>10}\n", "layout (trident train flags)",
               "pred tok/s", "meas tok/s", "meas/pred", "vs single", "pred MiB", "meas MiB*");
    auto row = [&](const std::string& name, double pred_tok, double pred_bytes, const Measured& m) {
      if (!m.ok) {
        fmt::print("{:<42} {:>10.0f} {:>10} {:>8} {:>9} {:>10.1f}   {}\n", name, pred_tok,
                   "unsupported", "-", "-", pred_bytes / 1048576.0, m.error);
        return;
      }
      fmt::print("{:<42} {:>10.0f} {:>10.0f} {:>8.2f} {:>9} {:>10.1f} {:>10.1f}\n", name,
                 pred_tok, m.tokens_per_s, m.tokens_per_s / pred_tok,
                 single.ok ? fmt::format("{:.2f}x", m.tokens_per_s / single.tokens_per_s) : "-",
                 pred_bytes / 1048576.0, m.peak_mib);
    };
    row(fmt::format("single process ({} threads)", cores), single_pred.step.tokens_per_s,
        single_pred.memory.worst().total(), single);
    for (const Predicted& pr : layouts) {
      const plan::Layout& l = pr.layout;
      std::string name = l.train_flags();
      const Measured m = run(a, fmt::format("dp{}_tp{}_pp{}_ep{}_z{}_{}_m{}", l.dp, l.tp, l.pp, l.ep, l.zero,
                                            pp::to_string(l.schedule), l.micro_batches),
                             a.mpirun + " -n " + std::to_string(a.world), name);
      row(name, pr.tokens_per_s, pr.memory_bytes, m);
      std::fflush(stdout);
    }
    fmt::print("* measured MiB: world rank 0's peak (pp stage 0); predicted: the worst stage\n");
  } catch (const std::exception& e) {
    fmt::print(stderr, "plan_vs_measured: {}\n", e.what());
    return 1;
  }
  return 0;
}
