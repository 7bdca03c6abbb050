// The stop-signal handler and its flag (see preemption.h).
#include "train/preemption.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>

#include "core/check.h"

namespace trident::train {

namespace {

// The one piece of global mutable state Trident allows: a signal handler can only talk to the
// program through a lock-free object of static storage, and sig_atomic_t is the type the C++
// standard guarantees for that. It holds the first stop signal received, 0 before any.
volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void on_stop_signal(int signal) {
  if (g_stop_signal != 0) {
    // Only async-signal-safe calls here: write(2) and _exit(2). A save in progress is left as
    // a hidden staging directory; `latest` still names the last complete checkpoint.
    static const char kMessage[] =
        "trident: second stop signal: aborting now without saving (the checkpoint directory's "
        "'latest' still names the last complete checkpoint)\n";
    ssize_t ignored = ::write(STDERR_FILENO, kMessage, sizeof kMessage - 1);
    (void)ignored;
    ::_exit(128 + signal);
  }
  g_stop_signal = signal;
  static const char kAcknowledge[] =
      "trident: stop signal received: finishing this step, then saving a checkpoint and exiting "
      "(a second signal aborts at once)\n";
  ssize_t ignored = ::write(STDERR_FILENO, kAcknowledge, sizeof kAcknowledge - 1);
  (void)ignored;
}

struct NamedSignal {
  std::string_view name;
  int number;
};
constexpr NamedSignal kSignals[] = {
    {"TERM", SIGTERM}, {"INT", SIGINT}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2},
    {"HUP", SIGHUP},   {"QUIT", SIGQUIT}, {"ALRM", SIGALRM}, {"XCPU", SIGXCPU},
};

std::string upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::string accepted_names() {
  std::vector<std::string_view> names;
  for (const NamedSignal& s : kSignals) names.push_back(s.name);
  return fmt::format("{}", fmt::join(names, ", "));
}

}  // namespace

std::string signal_name(int signal) {
  for (const NamedSignal& s : kSignals) {
    if (s.number == signal) return fmt::format("SIG{}", s.name);
  }
  return fmt::format("signal {}", signal);
}

std::vector<int> parse_preempt_signals(std::string_view list) {
  std::vector<int> out;
  if (trim(list).empty() || upper(trim(list)) == "NONE") return out;
  std::string_view rest = list;
  while (true) {
    const size_t comma = rest.find(',');
    const std::string_view item = trim(rest.substr(0, comma));
    std::string name = upper(item);
    if (name.starts_with("SIG")) name = name.substr(3);
    int number = 0;
    const auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), number);
    const bool numeric = !name.empty() && ec == std::errc() && end == name.data() + name.size();
    if (!numeric) {
      number = 0;
      for (const NamedSignal& s : kSignals) {
        if (s.name == name) number = s.number;
      }
    }
    TRI_CHECK(number > 0 && number < NSIG && number != SIGKILL && number != SIGSTOP,
              "--preempt-signals: '{}' is not a signal that can be caught; give a comma-separated "
              "list of {} (or numbers), or none",
              item, accepted_names());
    if (std::find(out.begin(), out.end(), number) == out.end()) out.push_back(number);
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  return out;
}

std::string preempted_message(int signal, std::int64_t step, std::int64_t steps,
                              const std::string& saved, const std::string& ckpt_dir, int world_size) {
  namespace fs = std::filesystem;
  std::string out = fmt::format("trident: stopped by {} after step {} of {}", signal_name(signal), step, steps);
  if (saved.empty()) {
    return out + "; nothing could be saved: this run has no --ckpt-dir (give --ckpt-dir DIR to "
                 "make a run resumable)\n";
  }
  // The binary's own path and the absolute directory, so the line can be pasted anywhere.
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) exe = "trident";
  const fs::path dir = fs::absolute(ckpt_dir, ec);
  out += fmt::format("; saved {}\nresume with: {} train --resume {}\n", saved, exe.string(),
                     (ec ? fs::path(ckpt_dir) : dir).lexically_normal().string());
  if (world_size > 1) {
    out += fmt::format("  (under the same launcher with {} ranks, e.g. scripts/trident-mpirun -n {} ...; "
                       "another world size works too with --dp/--tp/--pp, checkpoints are layout-free)\n",
                       world_size, world_size);
  }
  return out;
}

PreemptionHandler::PreemptionHandler(std::vector<int> signals) : signals_(std::move(signals)) {
  g_stop_signal = 0;
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  // SA_RESTART: a signal must not make a blocking read, write or MPI progress call fail.
  action.sa_flags = SA_RESTART;
  sigemptyset(&action.sa_mask);
  for (int s : signals_) sigaddset(&action.sa_mask, s);  // one handler runs at a time
  previous_.resize(signals_.size());
  for (size_t i = 0; i < signals_.size(); ++i) {
    TRI_CHECK(::sigaction(signals_[i], &action, &previous_[i]) == 0,
              "cannot install the handler for {}: {}", signal_name(signals_[i]),
              std::strerror(errno));
  }
}

PreemptionHandler::~PreemptionHandler() {
  for (size_t i = 0; i < signals_.size(); ++i) ::sigaction(signals_[i], &previous_[i], nullptr);
  g_stop_signal = 0;
}

int PreemptionHandler::local_signal() const { return g_stop_signal; }

int PreemptionHandler::agreed_signal(comm::Communicator& world) const {
  std::int32_t flag[1] = {static_cast<std::int32_t>(g_stop_signal)};
  world.allreduce(std::span<std::int32_t>(flag), comm::ReduceOp::kMax).wait();
  return flag[0];
}

}  // namespace trident::train
