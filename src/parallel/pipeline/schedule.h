// Pipeline schedules as data: for one pp rank, the ordered list of instructions it runs in
// one training step. Generators emit the compute order (Forward/Backward per micro-batch and
// chunk); a second pass inserts the point-to-point messages (a Recv right before the
// compute that needs it, a Send right after the compute that produces it) and the step's
// tail (ReduceTiedGrads on the first and last rank, then End). The same lists drive the
// executor (executor.h) and the simulator (simulator.h).
//
// The optimizer step is not an instruction: the list ends with End, after which every
// gradient of the rank is final and the engine runs grad clipping and the optimizer.
//
// Chunks: with V virtual stages per rank, Instruction::chunk is the *local* chunk index
// c in [0, V); the global chunk (pipeline stage) is s = rank + c * pp (Partition).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace trident::pp {

enum class ScheduleKind { kGPipe, kOneFOneB, kInterleaved };
// The spellings, indexed by the enum's value: "gpipe", "1f1b", "interleaved".
std::span<const std::string_view> schedule_kind_names();
const char* to_string(ScheduleKind kind);
// Accepts "gpipe", "1f1b" (or "1F1B"), "interleaved"; throws listing them otherwise.
ScheduleKind parse_schedule_kind(std::string_view name);

enum class Op : uint8_t {
  kForward,          // chunk forward of micro-batch mb (on the last chunk: blocks only)
  kBackward,         // chunk backward of mb (on the last chunk: ln_f, head, loss first)
  kRecvActivation,   // activation of (mb, chunk) from the previous stage, rank `peer`
  kSendActivation,   // output of (mb, chunk) to the next stage, rank `peer`
  kRecvGrad,         // gradient of (mb, chunk)'s output from the next stage, rank `peer`
  kSendGrad,         // gradient of (mb, chunk)'s input to the previous stage, rank `peer`
  kReduceTiedGrads,  // sum the tied embedding's gradient with rank `peer` (first <-> last stage)
  kEnd,              // step over: the rank's gradients are final
};

struct Instruction {
  Op op = Op::kEnd;
  int mb = -1;     // micro-batch, -1 for ReduceTiedGrads/End
  int chunk = 0;   // local chunk index
  int peer = -1;   // pp rank of the other side of a message
  bool operator==(const Instruction&) const = default;
};

struct ScheduleSpec {
  ScheduleKind kind = ScheduleKind::kOneFOneB;
  int pp = 1;
  int micro_batches = 1;
  int virtual_stages = 1;  // V; > 1 only with the interleaved schedule

  int num_chunks() const { return pp * virtual_stages; }
  // Throws trident::Error: pp, M, V < 1; gpipe/1f1b with V != 1; interleaved with pp < 2,
  // V < 2 or M % pp != 0 (Megatron's rule); message tags that would not fit MPI's range.
  void validate() const;
  std::string describe() const;  // "1f1b pp=4 M=8"
};

// Compute-only order (Forward/Backward) of `rank`.
std::vector<Instruction> compute_order(const ScheduleSpec& spec, int rank);
// Inserts the Send/Recv instructions and appends ReduceTiedGrads (ranks 0 and pp-1 when
// pp > 1) and End.
std::vector<Instruction> add_communication(const ScheduleSpec& spec, int rank,
                                           const std::vector<Instruction>& compute);
// compute_order + add_communication.
std::vector<Instruction> build_schedule(const ScheduleSpec& spec, int rank);
// All ranks' lists, index = pp rank.
std::vector<std::vector<Instruction>> build_all_schedules(const ScheduleSpec& spec);

// "F3", "B0", "RA2", "SG1", with ".c" (local chunk) appended when V > 1; "TIED", "END".
std::string to_string(const Instruction& ins, int virtual_stages);
// Space-separated; compute_only keeps just the F/B instructions: "F0 F1 B0 F2 B1 ...".
// `mark` >= 0 brackets that instruction ("[RA2]"), e.g. where a simulation got stuck.
std::string format_schedule(const std::vector<Instruction>& list, int virtual_stages,
                            bool compute_only = false, int mark = -1);

}  // namespace trident::pp
