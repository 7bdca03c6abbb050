// ZeRO-1/2's sharded fp32 master under --precision bf16|fp16 (issue 13; docs/memory.md, "the fp32
// master and the bf16 weight copy"). The parameters read only as matmul operands
// (ParamInfo::operand_only: the layer matrices, an untied LM head) keep their fp32 master values
// for this rank's ZeRO shard only, here, in flat order; their flat values become address space
// without memory (ParameterSet::keep_flat_values), a key the matmul engine finds their 16-bit
// copy by. The copy (2 bytes a flat element, the whole flat range as the per-step copy it
// replaces) is persistent: after an update, init or load (invalidate) the next refresh rounds
// this rank's pieces -- the master's values, the flat buffer's for the value-read parameters --
// with the keys round_weights always uses (logical indices), and all-gathers each ZeRO segment's
// 16-bit words over its group: the bits of a copy rounded whole from the full values. The
// value-read parameters (embeddings, norm gains, biases, the router) keep their full fp32
// values, all-gathered after each update as before, packed: only their elements travel.
// Per operand-only parameter: 2 + 4 + 12/N bytes at ZeRO-1, 2 + 16/N at ZeRO-2.
//
// Under --offload optimizer the master shard lives in the offload file instead, as the values
// part of each block (the store's value index is the master index), and streams through AdamW
// with the moments; each block's updated master values are rounded into this rank's pieces of the
// 16-bit copy as they pass (round_block), so the refresh after an update reads nothing from disk.
// Per operand-only parameter in memory: 2 + 4 bytes at ZeRO-1, 2 + 4/N at ZeRO-2.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "core/memory.h"
#include "kernels/matmul_engine.h"
#include "nn/bf16_weights.h"
#include "nn/parameters.h"
#include "optim/moment_store.h"
#include "parallel/zero.h"

namespace trident::parallel {

// Whether ZeRO stage `zero` at `precision` shards the fp32 master (DataParallel) -- the one rule
// the engine and the planner share: stages 1-2 in bf16 or fp16, not a LoRA run (its base is
// frozen and its adapters are value-read: left as before). With --offload optimizer the shard
// goes to the offload file (attach_store).
bool shards_master(int zero, kernels::Precision precision, bool lora);

// The flat ranges of `ps`'s operand-only parameters, merged where they touch, ascending.
std::vector<FlatRange> operand_only_runs(const nn::ParameterSet& ps);
// Elements of the operand-only parameters inside `pieces` (a rank's ZeRO shard): its master.
int64_t operand_only_elems(const nn::ParameterSet& ps, const std::vector<FlatRange>& pieces);

class ShardedMaster {
 public:
  using GroupOf = std::function<comm::Communicator&(const ShardSegment&)>;
  using WaitAll = std::function<void(std::vector<comm::Work>&)>;

  // Takes this rank's shard of the operand-only values from the flat buffer (which must exist)
  // and keeps only the other parameters' flat values. `offloaded`: the shard is to live in an
  // offload store, and the flat values keep it until attach_store.
  ShardedMaster(nn::ParameterSet& ps, const ShardLayout& layout, MemoryTracker& tracker, bool offloaded = false);

  // ---- --offload optimizer ----
  // The shard indices of this rank's operand-only elements (the store index too: a sharded master
  // means no frozen parameters), merged where they touch: the values the offload store holds for
  // it, whose value indices are then the master's.
  optim::ValueRuns store_runs() const;
  // Writes this rank's master from the flat values into `store`'s values part and frees them in
  // memory; from here on the master is read and written there. `store` must outlive this master.
  void attach_store(optim::MomentStore& store);
  bool offloaded() const { return store_ != nullptr; }

  // Parameter `id`'s values live here (operand-only), not in the flat buffer.
  bool holds(int id) const { return ps_.info(id).operand_only && ps_.info(id).numel > 0; }
  int64_t numel() const { return numel_; }
  // AdamW's values of owned flat elements [flat, flat + n), updated in store block `b`
  // (optim::AdamW::ValuesAt): offloaded, the operand-only ones are in the block's values part.
  std::pair<float*, int64_t> values_at(int64_t flat, int64_t n, const optim::MomentStore::Block& b);
  // An update of the master begins (AdamW's step count `step` once it is applied): offloaded,
  // each block is then rounded into the copy as it passes (round_block) with the last refresh's
  // rounding at that step, when a copy exists. The copy is stale afterwards either way.
  void begin_update(int64_t step);
  void round_block(const optim::MomentStore::Block& b);
  // Param `id`'s (held) local tensor with this rank's shard elements filled in, zeros elsewhere.
  void read_values(int id, float* local) const;
  // This rank's part of param `id`: local elements [local_begin, local_begin + count) at master
  // index `at` (count 0: none).
  struct Part {
    int64_t local_begin = 0, count = 0, at = 0;
  };
  Part part(int id) const;
  // Stores local elements [first, first + count) of param `id`, inside part(id).
  void write_range(int id, int64_t first, int64_t count, const float* values);
  // This rank's shard of every held parameter, with ParameterSet::initialize's bits.
  void initialize(uint64_t seed);

  // The copy no longer matches the values (init or load).
  void invalidate() {
    stale_ = true;
    rounded_.reset();
  }
  bool stale() const { return stale_; }
  // The 16-bit copy of the flat range (null before the first refresh).
  const kernels::bf16_t* copy() const { return copy_.data(); }
  // Rounds this rank's pieces into the copy (offloaded: the operand-only ones only if the update
  // did not already, with r; else read back from the store), all-gathers it (each segment over
  // group_of) and registers it with mm; then not stale.
  void refresh(kernels::MatmulEngine& mm, const nn::WeightRounding& r, const GroupOf& group_of,
               const WaitAll& wait_all);
  // After an update of this rank's pieces: each segment's value-read elements all-gathered
  // (fp32, packed) into the flat buffer.
  void gather_flat_values(const GroupOf& group_of, const WaitAll& wait_all);

 private:
  struct Run {
    int id;
    int64_t lo, hi;  // flat, inside one of this rank's pieces
    int64_t at;      // master index of lo
  };
  // The run holding flat element f, or the first one after it (runs_.size(): none).
  std::size_t run_at(int64_t f) const;
  // The value-read flat ranges inside [lo, hi).
  std::vector<FlatRange> value_ranges(int64_t lo, int64_t hi) const;
  // Master elements [at, at + n) into out: from memory or the store.
  void read_master(int64_t at, int64_t n, float* out) const;

  nn::ParameterSet& ps_;
  const ShardLayout& layout_;
  MemoryTracker& tracker_;
  std::vector<FlatRange> operand_;  // operand_only_runs(ps_)
  std::vector<Run> runs_;           // ascending
  std::vector<int> run_of_;         // per parameter id; -1: none here
  int64_t numel_ = 0;
  FloatBuffer master_;                    // in memory (empty when offloaded)
  optim::MomentStore* store_ = nullptr;   // offloaded: the values part holds the master
  nn::Bf16WeightCopy copy_;
  bool stale_ = true;
  nn::WeightRounding rounding_;  // the last refresh's
  // Offloaded: the rounding this rank's operand-only pieces of the copy were made with during the
  // last update (none: not made there, or changed since by an init or load).
  std::optional<nn::WeightRounding> rounded_, rounding_update_;
};

}  // namespace trident::parallel
