// Runs a pipeline instruction list: compute on the model chunks, activations and gradients
// over the pp group, the tied-embedding gradient sum, and a recorded timeline.
#include "parallel/pipeline/executor.h"

#include <fmt/format.h>

#include <chrono>
#include <cstring>

#include "comm/progress_probe.h"
#include "core/check.h"

namespace trident::pp {

namespace {
using Clock = std::chrono::steady_clock;
constexpr int kTiedTag = 1;
constexpr int kTagBase = 16;
enum { kActTag = 0, kGradTag = 1 };
}  // namespace

struct PipelineExecutor::Slot {
  nn::ModelActivations acts;
  comm::Work send;  // the activation send reading acts.stage_output()
};

struct PipelineExecutor::SendBuffer {
  FloatBuffer buf;
  comm::Work work;
};

// Forwards the model's hooks to the engine's, holding back after_group_backward until the
// chunk's last backward of the step.
class PipelineExecutor::ChunkHooks : public nn::ModelHooks {
 public:
  nn::ModelHooks* user = nullptr;
  bool final_backward = false;
  void before_group_forward(int g) override { if (user) user->before_group_forward(g); }
  void before_group_backward(int g) override { if (user) user->before_group_backward(g); }
  void after_group_backward(int g) override {
    if (user && final_backward) user->after_group_backward(g);
  }
};

PipelineExecutor::PipelineExecutor(comm::Communicator& pp_group, std::vector<nn::Model*> chunks,
                                   const ScheduleSpec& spec, MemoryTracker& tracker,
                                   const ExecutorOptions& options)
    : comm_(pp_group), chunks_(std::move(chunks)), spec_(spec), tracker_(tracker), opts_(options) {
  spec_.validate();
  rank_ = comm_.rank();
  TRI_CHECK(comm_.size() == spec_.pp, "pipeline group {} has {} ranks but the schedule is for pp {}",
            comm_.name(), comm_.size(), spec_.pp);
  TRI_CHECK(static_cast<int>(chunks_.size()) == spec_.virtual_stages,
            "pp rank {} got {} model chunks for {} virtual stages", rank_, chunks_.size(),
            spec_.virtual_stages);
  TRI_CHECK(opts_.micro_batch_rows > 0 && opts_.seq_len > 0, "micro-batch shape {}x{} must be positive",
            opts_.micro_batch_rows, opts_.seq_len);
  const int S = spec_.num_chunks();
  for (int c = 0; c < spec_.virtual_stages; ++c) {
    nn::Model* g = chunks_[static_cast<std::size_t>(c)];
    TRI_CHECK(g != nullptr, "pp rank {}: chunk {} is null", rank_, c);
    const int s = rank_ + c * spec_.pp;
    TRI_CHECK(g->stage().has_embedding == (s == 0) && g->stage().has_head == (s == S - 1),
              "pp rank {} chunk {} is global stage {} of {}: it must {}hold the embedding and "
              "{}hold the head (build it from partition_layers().chunk(rank, chunk))",
              rank_, c, s, S, s == 0 ? "" : "not ", s == S - 1 ? "" : "not ");
    TRI_CHECK(g->params().total_numel() == 0 || g->params().allocated(),
              "pp rank {} chunk {}: allocate() the model before building the executor", rank_, c);
    hooks_.push_back(std::make_unique<ChunkHooks>());
    g->set_hooks(hooks_.back().get());
  }
  list_ = build_schedule(spec_, rank_);
  last_backward_.assign(static_cast<std::size_t>(spec_.virtual_stages), -1);
  for (std::size_t i = 0; i < list_.size(); ++i) {
    if (list_[i].op == Op::kBackward) last_backward_[static_cast<std::size_t>(list_[i].chunk)] = static_cast<int>(i);
  }
  free_.resize(static_cast<std::size_t>(spec_.virtual_stages));
  live_.resize(static_cast<std::size_t>(spec_.virtual_stages));
  for (auto& l : live_) l.resize(static_cast<std::size_t>(spec_.micro_batches));
  pool_size_.assign(static_cast<std::size_t>(spec_.virtual_stages), 0);
  bool poll_sends = opts_.send_progress == SendProgress::kThread;
  if (opts_.send_progress == SendProgress::kAuto && spec_.pp > 1) {
    comm::SendProgressProbeOptions probe;
    probe.bytes = static_cast<std::size_t>(chunks_[0]->local_rows(opts_.micro_batch_rows * opts_.seq_len) *
                                           chunks_[0]->config().n_embd) * sizeof(float);
    poll_sends = comm::sends_need_sender_progress(comm_, probe);
  }
  if (poll_sends && spec_.pp > 1) progress_ = std::thread([this] { progress_loop(); });
}

PipelineExecutor::~PipelineExecutor() {
  stop_ = true;
  if (progress_.joinable()) progress_.join();
  // After a failed step, messages may still be in flight into or out of our buffers: keep
  // those buffers alive (leak them) rather than let MPI touch freed memory.
  for (auto& chunk : live_) {
    for (auto& slot : chunk) {
      if (slot) (void)slot.release();
    }
  }
  for (auto& sb : send_buffers_) {
    if (!sb->work.is_completed()) (void)sb.release();
  }
}

void PipelineExecutor::set_hooks(std::vector<nn::ModelHooks*> chunk_hooks) {
  TRI_CHECK(chunk_hooks.size() == 1 || chunk_hooks.size() == chunks_.size(),
            "set_hooks: {} hooks for {} chunks", chunk_hooks.size(), chunks_.size());
  for (std::size_t c = 0; c < hooks_.size(); ++c) {
    hooks_[c]->user = chunk_hooks.size() == 1 ? chunk_hooks[0] : chunk_hooks[c];
  }
}

int PipelineExecutor::pool_size(int chunk) const {
  return pool_size_.at(static_cast<std::size_t>(chunk));
}

PipelineExecutor::Slot& PipelineExecutor::acquire(int chunk, int mb) {
  auto& freelist = free_[static_cast<std::size_t>(chunk)];
  auto& live = live_[static_cast<std::size_t>(chunk)][static_cast<std::size_t>(mb)];
  TRI_CHECK(!live, "pp rank {}: micro-batch {} of chunk {} is already in flight", rank_, mb, chunk);
  if (freelist.empty()) {
    auto slot = std::make_unique<Slot>();
    slot->acts = chunks_[static_cast<std::size_t>(chunk)]->make_activations(
        tracker_, opts_.micro_batch_rows, opts_.seq_len);
    ++pool_size_[static_cast<std::size_t>(chunk)];
    live = std::move(slot);
  } else {
    live = std::move(freelist.back());
    freelist.pop_back();
    live->send.wait();  // complete long ago: its receiver answered with the gradient
  }
  return *live;
}

PipelineExecutor::Slot& PipelineExecutor::live_slot(int chunk, int mb, const char* what) {
  auto& live = live_[static_cast<std::size_t>(chunk)][static_cast<std::size_t>(mb)];
  TRI_CHECK(live != nullptr, "pp rank {}: {} of micro-batch {} chunk {} before its forward", rank_,
            what, mb, chunk);
  return *live;
}

void PipelineExecutor::release(int chunk, int mb) {
  auto& live = live_[static_cast<std::size_t>(chunk)][static_cast<std::size_t>(mb)];
  free_[static_cast<std::size_t>(chunk)].push_back(std::move(live));
}

PipelineExecutor::SendBuffer& PipelineExecutor::acquire_send_buffer() {
  for (auto& sb : send_buffers_) {
    if (sb->work.test()) return *sb;
  }
  auto sb = std::make_unique<SendBuffer>();
  const auto n = static_cast<std::size_t>(
      chunks_[0]->local_rows(opts_.micro_batch_rows * opts_.seq_len) * chunks_[0]->config().n_embd);
  sb->buf = FloatBuffer(tracker_, MemCategory::kCommBuffers, n);
  send_buffers_.push_back(std::move(sb));
  return *send_buffers_.back();
}

int PipelineExecutor::tag(int kind, int mb, int dest_stage) const {
  return kTagBase + 2 * (mb * spec_.num_chunks() + dest_stage) + kind;
}

void PipelineExecutor::wait(comm::Work& work, const Instruction& ins, const char* what) {
  try {
    work.wait();
  } catch (const Error& e) {
    TRI_FAIL("pipeline ({}): pp rank {} waiting for the {} of micro-batch {} (local chunk {}) "
             "with pp rank {} failed; that stage may have died or run a different schedule: {}",
             spec_.describe(), rank_, what, ins.mb, ins.chunk, ins.peer, e.what());
  }
}

void PipelineExecutor::track_send(const comm::Work& work) {
  step_sends_.push_back(work);
  if (progress_.joinable()) {
    std::lock_guard lock(progress_mutex_);
    in_flight_.push_back(work);
  }
}

void PipelineExecutor::progress_loop() {
  // Runs only where sends need their sender inside MPI (see the constructor), so it polls
  // often: each MPI_Test lets the transport push the next fragment of a large message.
  // Every poll runs the whole MPI progress engine (about 10 us of CPU), which is why the
  // thread is not started where the transport moves messages by itself.
  while (!stop_) {
    if (!step_running_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      continue;
    }
    {
      std::lock_guard lock(progress_mutex_);
      for (std::size_t i = 0; i < in_flight_.size();) {
        bool done = true;
        try {
          done = in_flight_[i].test();
        } catch (...) {
          // The main thread's wait() reports it.
        }
        if (done) {
          in_flight_[i] = in_flight_.back();
          in_flight_.pop_back();
        } else {
          ++i;
        }
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

double PipelineExecutor::run_step(const BatchProvider& batches, float dloss) {
  const int64_t B = opts_.micro_batch_rows, T = opts_.seq_len;
  // Residual-stream floats of one micro-batch (with sequence parallelism, this tp rank's rows).
  const int64_t n = chunks_[0]->local_rows(B * T) * chunks_[0]->config().n_embd;
  const int S = spec_.num_chunks();
  const auto t0 = Clock::now();
  auto now = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  events_.clear();
  step_sends_.clear();
  step_running_ = true;
  struct StopProgress {
    std::atomic<bool>& flag;
    ~StopProgress() { flag = false; }
  } stop_progress{step_running_};
  double loss = 0.0;

  for (std::size_t i = 0; i < list_.size(); ++i) {
    const Instruction& ins = list_[i];
    nn::Model* model = ins.op == Op::kEnd ? nullptr : chunks_[static_cast<std::size_t>(ins.chunk)];
    const int s = rank_ + ins.chunk * spec_.pp;
    switch (ins.op) {
      case Op::kRecvActivation: {
        Slot& slot = acquire(ins.chunk, ins.mb);
        comm::Work w = comm_.recv(std::span<float>(slot.acts.stage_input(), static_cast<std::size_t>(n)),
                                  ins.peer, tag(kActTag, ins.mb, s));
        wait(w, ins, "activation");
        break;
      }
      case Op::kForward: {
        const double start = now();
        Slot& slot = s == 0 ? acquire(ins.chunk, ins.mb) : live_slot(ins.chunk, ins.mb, "forward");
        if (model->stage().has_embedding) {
          const MicroBatch mbd = batches(ins.mb);
          TRI_CHECK(mbd.ids != nullptr, "the batch provider gave no ids for micro-batch {}", ins.mb);
          model->embed_forward(slot.acts, mbd.ids, B, T);
        }
        model->blocks_forward(slot.acts, B, T);
        events_.push_back({Op::kForward, ins.mb, ins.chunk, start, now()});
        break;
      }
      case Op::kSendActivation: {
        Slot& slot = live_slot(ins.chunk, ins.mb, "send of the activation");
        slot.send = comm_.send(std::span<const float>(slot.acts.stage_output(), static_cast<std::size_t>(n)),
                               ins.peer, tag(kActTag, ins.mb, s + 1));
        track_send(slot.send);
        break;
      }
      case Op::kRecvGrad: {
        float* g = model->prepare_residual_grad(B, T);
        comm::Work w = comm_.recv(std::span<float>(g, static_cast<std::size_t>(n)), ins.peer,
                                  tag(kGradTag, ins.mb, s));
        wait(w, ins, "gradient");
        break;
      }
      case Op::kBackward: {
        const double start = now();
        Slot& slot = live_slot(ins.chunk, ins.mb, "backward");
        hooks_[static_cast<std::size_t>(ins.chunk)]->final_backward =
            static_cast<int>(i) == last_backward_[static_cast<std::size_t>(ins.chunk)];
        if (model->stage().has_head) {
          const MicroBatch mbd = batches(ins.mb);
          TRI_CHECK(mbd.targets != nullptr, "the batch provider gave no targets for micro-batch {}",
                    ins.mb);
          loss += model->head_forward_backward(slot.acts, mbd.targets, B, T, dloss);
        }
        model->blocks_backward(slot.acts, B, T);
        if (model->stage().has_embedding) model->embed_backward(slot.acts, B, T);
        hooks_[static_cast<std::size_t>(ins.chunk)]->final_backward = false;
        release(ins.chunk, ins.mb);
        events_.push_back({Op::kBackward, ins.mb, ins.chunk, start, now()});
        break;
      }
      case Op::kSendGrad: {
        SendBuffer& sb = acquire_send_buffer();
        std::memcpy(sb.buf.data(), model->residual_grad(), static_cast<std::size_t>(n) * sizeof(float));
        sb.work = comm_.send(std::span<const float>(sb.buf.data(), static_cast<std::size_t>(n)),
                             ins.peer, tag(kGradTag, ins.mb, s - 1));
        track_send(sb.work);
        break;
      }
      case Op::kReduceTiedGrads:
        if (opts_.reduce_tied_grads) reduce_tied_grads();
        break;
      case Op::kEnd:
        for (comm::Work& w : step_sends_) wait(w, ins, "sends");
        break;
    }
  }
  (void)S;
  {
    std::lock_guard lock(progress_mutex_);
    in_flight_.clear();
  }
  step_seconds_ = now();
  return loss;
}

void PipelineExecutor::reduce_tied_grads() {
  const int P = spec_.pp;
  if (P == 1 || (rank_ != 0 && rank_ != P - 1)) return;
  nn::Model* model = rank_ == 0 ? chunks_.front() : chunks_.back();
  // Both ends derive this from the same config: an untied model has nothing to sum.
  const int id = model->params().find_tied();
  if (id < 0 || model->params().info(id).frozen) return;  // frozen (a LoRA base): no gradient on either end
  const auto count = static_cast<std::size_t>(model->params().info(id).numel);
  float* grad = model->params().grad(id);
  FloatBuffer other(tracker_, MemCategory::kCommBuffers, count);
  const int peer = rank_ == 0 ? P - 1 : 0;
  comm::Work r = comm_.recv(std::span<float>(other.data(), count), peer, kTiedTag);
  comm::Work s = comm_.send(std::span<const float>(grad, count), peer, kTiedTag);
  const Instruction ins{Op::kReduceTiedGrads, -1, 0, peer};
  wait(r, ins, "tied embedding gradient");
  wait(s, ins, "tied embedding gradient");
  // a + b on both sides: the two copies stay bit-identical.
  for (std::size_t i = 0; i < count; ++i) grad[i] += other[i];
}

Timeline PipelineExecutor::gather_timeline() {
  // Five doubles per event: op, mb, chunk, start, end.
  std::vector<double> mine;
  for (const TimelineEvent& e : events_) {
    mine.insert(mine.end(), {static_cast<double>(e.op), static_cast<double>(e.mb),
                             static_cast<double>(e.chunk), e.start, e.end});
  }
  const int P = comm_.size();
  std::vector<int64_t> counts(static_cast<std::size_t>(P));
  int64_t my_count = static_cast<int64_t>(mine.size());
  comm_.all_gather(std::span<const int64_t>(&my_count, 1), std::span<int64_t>(counts)).wait();
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  std::vector<double> all(static_cast<std::size_t>(total));
  comm_.all_gather_v(std::span<const double>(mine), std::span<double>(all),
                     std::span<const int64_t>(counts)).wait();
  std::vector<double> ends(static_cast<std::size_t>(P));
  comm_.all_gather(std::span<const double>(&step_seconds_, 1), std::span<double>(ends)).wait();
  Timeline tl;
  tl.virtual_stages = spec_.virtual_stages;
  tl.ranks.resize(static_cast<std::size_t>(P));
  std::size_t k = 0;
  for (int r = 0; r < P; ++r) {
    for (int64_t j = 0; j < counts[static_cast<std::size_t>(r)]; j += 5, k += 5) {
      tl.ranks[static_cast<std::size_t>(r)].push_back(
          {static_cast<Op>(static_cast<int>(all[k])), static_cast<int>(all[k + 1]),
           static_cast<int>(all[k + 2]), all[k + 3], all[k + 4]});
    }
    tl.step_time = std::max(tl.step_time, ends[static_cast<std::size_t>(r)]);
  }
  return tl;
}

}  // namespace trident::pp
