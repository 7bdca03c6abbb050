// Preemption by signal: SIGTERM / SIGINT / SIGUSR1 (configurable) ask the run to stop after the
// step in flight; the training loop then agrees on it over the world (one tiny allreduce per
// step, so a signal that reached only some ranks still stops all of them at the same step),
// saves a checkpoint and exits with kExitPreempted. A second signal ends the process at once.
// What is saved and printed is left to the trainer.
#pragma once

#include <csignal>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "comm/communicator.h"

namespace trident::train {

// Exit codes of `trident train` (README, "Exit codes"). 1 is any error; 2 a usage error.
inline constexpr int kExitPreempted = 75;         // stopped by a signal, checkpoint saved: resume it
inline constexpr int kExitPreemptedUnsaved = 76;  // stopped by a signal, no --ckpt-dir: nothing saved
// A second signal exits at once with 128 + the signal number (143 for SIGTERM), as a shell
// reports a process killed by that signal.

// "TERM,INT,USR1" (names with or without SIG, or numbers) -> {15, 2, 10}; "none" or "" -> {}.
// Throws naming --preempt-signals for an unknown name or a signal that cannot be caught.
std::vector<int> parse_preempt_signals(std::string_view list);
// 15 -> "SIGTERM"; an unnamed number -> "signal 42".
std::string signal_name(int signal);

// What rank 0 prints when a stop signal ended the run after `step` of `steps`: the checkpoint
// written (`saved`, empty when there is no `ckpt_dir`) and the command that resumes it.
std::string preempted_message(int signal, std::int64_t step, std::int64_t steps,
                              const std::string& saved, const std::string& ckpt_dir, int world_size);

// Installs the stop handler for `signals` while it lives and restores the previous handlers
// when destroyed. One at a time per process (it owns the process's one stop flag).
class PreemptionHandler {
 public:
  explicit PreemptionHandler(std::vector<int> signals);
  ~PreemptionHandler();
  PreemptionHandler(const PreemptionHandler&) = delete;
  PreemptionHandler& operator=(const PreemptionHandler&) = delete;

  // The first stop signal this process received, 0 when none.
  int local_signal() const;
  // Collective over `world`: a stop signal some rank received (the largest number), 0 when
  // none. Every rank gets the same answer, so all of them stop after the same step.
  int agreed_signal(comm::Communicator& world) const;

 private:
  std::vector<int> signals_;
  std::vector<struct sigaction> previous_;
};

}  // namespace trident::train
