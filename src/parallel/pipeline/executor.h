// PipelineExecutor: runs one pp rank's instruction list (schedule.h) for a training step with
// the rank's model chunks and the pp group's point-to-point messages. What it leaves to the
// engine: zeroing gradients before the step, the data-parallel gradient reduction (through
// nn::ModelHooks), broadcasting/averaging the loss, clipping and the optimizer step.
//
// Per step, for instruction list L of this rank:
//   Forward(mb, c)   first chunk: embedding of the provider's ids; then the chunk's blocks.
//                    The last chunk stops before ln_f: its head runs in Backward.
//   Backward(mb, c)  last chunk: ln_f + head + loss (dloss per token) and its backward; then
//                    the blocks' backward; first chunk: the embedding's backward.
//   Recv*            posted when reached and waited at once (sends never block, so a
//                    schedule the simulator runs without deadlock runs here too); the
//                    activation lands in the micro-batch's own stage-input buffer, the
//                    gradient in the chunk's residual_grad().
//   Send*            MPI_Isend from the micro-batch's stage output (activation) or from a
//                    pooled copy of residual_grad() (gradient); all waited at End. Where the
//                    transport needs the sender inside MPI to move a large message (TCP,
//                    shared memory without single-copy: comm/progress_probe.h), a progress
//                    thread tests in-flight sends while compute runs, so the message does
//                    not wait for this rank's next MPI call.
//   ReduceTiedGrads  the tied embedding's gradient summed between the first and last stage (both end with
//                    a + b, bit-identical), unless ExecutorOptions::reduce_tied_grads is false
//                    (then call reduce_tied_grads() yourself, e.g. after the dp reduction).
// Activations: a ModelActivations per in-flight micro-batch per chunk, from a pool that grows to
// the schedule's peak (1F1B: min(pp - rank, M) on rank `rank`, GPipe: M) and is reused across
// steps; MemoryTracker's kActivations peak shows it.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "core/memory.h"
#include "nn/model.h"
#include "parallel/pipeline/schedule.h"
#include "parallel/pipeline/simulator.h"

namespace trident::pp {

// One micro-batch's tokens, (B, T) row-major each. ids are read on the rank holding the
// first chunk (in Forward), targets on the rank holding the last (in Backward); the other
// pointer may be null. They must stay valid until run_step returns.
struct MicroBatch {
  const int32_t* ids = nullptr;
  const int32_t* targets = nullptr;
};
using BatchProvider = std::function<MicroBatch(int mb)>;

// kAuto: run the progress thread only where comm/progress_probe.h measures that this rank's
// sends need it. The probe runs once, in the constructor, with the activation's size, which
// makes the constructor collective over the pp group (about 2 x pp x 10 ms) when pp > 1.
enum class SendProgress { kAuto, kThread, kNone };

struct ExecutorOptions {
  int64_t micro_batch_rows = 1;   // B of one micro-batch
  int64_t seq_len = 1;            // T
  bool reduce_tied_grads = true;  // run ReduceTiedGrads inside run_step
  SendProgress send_progress = SendProgress::kAuto;  // see the file comment
};

class PipelineExecutor {
 public:
  // `pp_group`: this rank's pipeline group (Mesh::pp()); its size is spec.pp. `chunks`: this
  // rank's V model chunks in local order (chunk c = global stage rank + c * pp, built from
  // Partition::chunk(rank, c)), allocated; they must outlive the executor.
  PipelineExecutor(comm::Communicator& pp_group, std::vector<nn::Model*> chunks,
                   const ScheduleSpec& spec, MemoryTracker& tracker,
                   const ExecutorOptions& options);
  ~PipelineExecutor();
  PipelineExecutor(const PipelineExecutor&) = delete;
  PipelineExecutor& operator=(const PipelineExecutor&) = delete;

  // Hooks for every chunk (group ids are per chunk's ParameterSet; `chunk_hooks[c]` or one
  // for all). before_group_forward/backward are forwarded on every micro-batch;
  // after_group_backward only on the chunk's last backward of the step, when its gradients
  // (accumulated over the micro-batches) are final -- except the tied embedding's, which the tied
  // reduction completes.
  void set_hooks(std::vector<nn::ModelHooks*> chunk_hooks);

  // Runs this rank's list once. Gradients accumulate (+=) into the chunks' gradient buffers;
  // zero them before. dloss = 1 / (tokens of the global batch). Returns the sum of the token
  // losses of all micro-batches on the rank holding the last chunk, 0 elsewhere.
  double run_step(const BatchProvider& batches, float dloss);
  // Sums the tied embedding's gradient between pp rank 0 (embedding) and pp rank pp-1 (head copy); a no-op
  // on other ranks and with pp == 1. Both ranks must call it.
  void reduce_tied_grads();

  const ScheduleSpec& spec() const { return spec_; }
  const std::vector<Instruction>& instructions() const { return list_; }
  // This rank's compute intervals of the last step, seconds from the start of run_step.
  const std::vector<TimelineEvent>& events() const { return events_; }
  double last_step_seconds() const { return step_seconds_; }
  // Collective over the pp group: every rank's events of the last step as one Timeline.
  Timeline gather_timeline();
  // Activation buffers the pool holds for local chunk c (= the most in flight at once so far).
  int pool_size(int chunk) const;
  // Whether this rank polls its sends from a progress thread (ExecutorOptions::send_progress).
  bool has_progress_thread() const { return progress_.joinable(); }

 private:
  struct Slot;
  struct SendBuffer;
  class ChunkHooks;

  Slot& acquire(int chunk, int mb);
  Slot& live_slot(int chunk, int mb, const char* what);
  void release(int chunk, int mb);
  SendBuffer& acquire_send_buffer();
  int tag(int kind, int mb, int dest_stage) const;
  void wait(comm::Work& work, const Instruction& ins, const char* what);
  void track_send(const comm::Work& work);
  void progress_loop();

  comm::Communicator& comm_;
  std::vector<nn::Model*> chunks_;
  ScheduleSpec spec_;
  MemoryTracker& tracker_;
  ExecutorOptions opts_;
  int rank_ = 0;
  std::vector<Instruction> list_;
  std::vector<int> last_backward_;  // per chunk: index in list_ of its last Backward
  std::vector<std::unique_ptr<ChunkHooks>> hooks_;
  std::vector<std::vector<std::unique_ptr<Slot>>> free_;          // per chunk
  std::vector<std::vector<std::unique_ptr<Slot>>> live_;          // per chunk, by mb
  std::vector<int> pool_size_;
  std::vector<std::unique_ptr<SendBuffer>> send_buffers_;
  std::vector<comm::Work> step_sends_;
  std::vector<TimelineEvent> events_;
  double step_seconds_ = 0.0;

  std::mutex progress_mutex_;
  std::vector<comm::Work> in_flight_;  // sends the progress thread tests
  std::atomic<bool> stop_{false};
  std::atomic<bool> step_running_{false};
  std::thread progress_;
};

}  // namespace trident::pp
