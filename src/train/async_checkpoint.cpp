// Asynchronous checkpointing (see async_checkpoint.h).
#include "train/async_checkpoint.h"

#include <exception>
#include <span>
#include <utility>
#include <vector>

#include "ckpt/checkpoint.h"
#include "core/check.h"
#include "core/timer.h"

namespace trident::train {

namespace {

// What rank 0 tells the others about the write in flight (reduced with max; the others say 0).
enum WriteState : int32_t { kRunning = 0, kWritten = 1, kFailed = 2 };

}  // namespace

AsyncCheckpointer::AsyncCheckpointer(parallel::Engine& engine, std::string root)
    : engine_(engine), root_(std::move(root)), writer_rank_(engine.mesh().rank() == 0) {}

AsyncCheckpointer::~AsyncCheckpointer() {
  if (writer_.joinable()) writer_.join();
}

std::optional<std::string> AsyncCheckpointer::start(int64_t step, const nlohmann::json& trident_state) {
  std::optional<std::string> previous = finish();
  Stopwatch clock;
  take_snapshot(engine_, root_, step, trident_state, snapshot_);
  snapshot_seconds_ = clock.seconds();
  if (writer_rank_) {
    finished_.store(false, std::memory_order_relaxed);
    error_.clear();
    writer_ = std::thread([this] {
      try {
        write_snapshot(snapshot_, root_);
      } catch (const std::exception& e) {
        error_ = e.what();
      } catch (...) {
        error_ = "unknown error";
      }
      finished_.store(true, std::memory_order_release);
    });
  }
  in_flight_ = true;
  return previous;
}

std::optional<std::string> AsyncCheckpointer::settle(bool wait) {
  if (!in_flight_) return std::nullopt;
  if (writer_rank_ && wait) writer_.join();
  int32_t state = kRunning;
  if (writer_rank_ && finished_.load(std::memory_order_acquire)) state = error_.empty() ? kWritten : kFailed;
  std::vector<int32_t> agreed{state};
  engine_.mesh().world().allreduce(std::span<int32_t>(agreed), comm::ReduceOp::kMax).wait();
  if (agreed[0] == kRunning) return std::nullopt;
  if (writer_.joinable()) writer_.join();
  in_flight_ = false;
  const std::string dir = root_ + "/" + ckpt::step_dir_name(snapshot_.step);
  if (agreed[0] == kFailed) {
    // The writer's message on every rank (comm::throw_if_root_failed), so any rank's abort says why.
    comm::throw_if_root_failed(
        engine_.mesh().world(),
        writer_rank_ ? fmt::format("the checkpoint of step {} written in the background (--async-ckpt) failed: {}; "
                                   "the run stops here, the checkpoints already in {} (and 'latest') are untouched",
                                   snapshot_.step, error_, root_)
                     : std::string());
  }
  return dir;
}

}  // namespace trident::train
