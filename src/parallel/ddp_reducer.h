// Data parallelism over the dp group: DDP's bucketed gradient reduction overlapping backward,
// and ZeRO stages 1-3 (Rajbhandari et al. 2020) on the same buckets. Implements nn::ModelHooks,
// so nn::Model tells it when a layer group's backward begins and ends; the engine drives the step
// (begin_step, begin/end_micro_batch, optimizer_step). Tensor and pipeline parallelism are left
// to the engine: everything here is over one dp group of one (tp, pp) coordinate.
//
// Buckets (as c10d's reducer): assigned once over the parameters in reverse registration
// order (= the order backward produces gradients), each a contiguous flat range of whole
// parameters of at most bucket_mb MiB (a larger parameter alone). A bucket holds a pending
// count of the layer groups it overlaps; when the last one's gradients are final the bucket's
// communication starts on the dp worker thread while backward goes on. The summed values do
// not depend on the bucketing: each element is reduced over the same ranks either way (the
// MPI algorithm may associate the N-rank sum differently for different message sizes, so
// with N > 2 results can differ in the last bits).
//
// When a group's gradients are final: GPT calls after_group_backward(g) when g is done, but
// on one stage with both ends it reports the head group only after embed_backward (the tied embedding lives
// in the embedding group and its gradient gets the head's part first). ln_f's gradient is
// final as soon as the next group's backward begins, so a group without the tied embedding is also
// marked final at the next before_group_backward; otherwise the bucket holding ln_f and the
// last blocks would wait for the whole backward.
//
// The tied embedding (stages 0-1, embedding and head on this rank): its gradient is dense from the
// head but final only after the embedding backward, the very last step of backward, and it is
// the largest tensor (2/3 of GPT-2 small). So the tied embedding is a bucket of its own, reduced as soon as
// the head's part is final (overlapping the blocks' backward), while the embedding backward
// writes into a scratch copy; afterwards only the scratch rows of tokens some dp rank looked up
// (the union of the ids, all_gathered) are summed over dp and added. Same sums, other order.
//
// Stages (Ψ parameters, N dp ranks, fp32, bytes per rank at rest; --grad-dtype bf16|fp16 makes
// the gradients 2Ψ at stages 0-1 and 2Ψ/N at 2-3, the buckets and per-group working buffers
// staying fp32: DataParallelOptions::grad_dtype):
//   0 DDP:  allreduce (sum) of each bucket on the last micro-batch    params 4Ψ, grads 4Ψ, Adam 8Ψ
//   1:      as 0; AdamW moments for this rank's shard only; each rank updates its shard of the
//           values, then all_gather of the values                     4Ψ + 4Ψ + 8Ψ/N
//   2:      gradients exist only per bucket, allocated when its first gradient is written
//           and freed once reduce_scattered into this rank's shard (every micro-batch)
//                                                                     4Ψ + 4Ψ/N + 8Ψ/N
//   3:      values sharded too: a group's values are all_gathered into a working buffer just
//           before its forward and its backward (the next group's gather prefetched) and freed
//           after                                                     16Ψ/N
//   3 + --offload optimizer+params: the value shard and the moments live in the offload file
//           (attach_value_store); a group's shard slice is read from it before its gather,
//           the read of the group after the next one issued while this one computes; the
//           update streams values with the moments                     4Ψ/N (gradients)
//   1-2 in bf16/fp16 (the sharded master, zero_master.h) + --offload optimizer: the operand-only
//           parameters' fp32 master shard lives with the moments in the offload file: per
//           such parameter in memory the 16-bit copy and the gradient, 2 + 4 (ZeRO-2: 2 + 4/N)
//   plus, during the step, the bucket / gathered-group working set.
// The loss is scaled by 1 / global tokens, so the dp *sum* is the global mean gradient.
//
// Expert parallelism (options.expert_group): an expert's gradient, already summed over its ep
// group's tokens by its owner, is summed over edp (the ranks holding the same experts), never
// scaled by ep; dense gradients over dp. Under ZeRO the shards follow (zero.h): dense segments
// over dp, expert segments over edp, each bucket's and each gathered group's collectives cut at
// the segment boundaries, so Ψ above is this rank's parameters (its E / ep experts) and a
// rank's share is dense / N + experts / (N / ep).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "core/memory.h"
#include "nn/bf16_weights.h"
#include "nn/parameters.h"
#include "nn/tensor_parallel.h"
#include "optim/adamw.h"
#include "parallel/grad_dtype.h"
#include "parallel/grad_reduce_dtype.h"
#include "parallel/grad_shard.h"
#include "parallel/zero.h"
#include "parallel/zero_master.h"

namespace trident::parallel {

struct DataParallelOptions {
  int zero = 0;           // ZeRO stage 0..3
  double bucket_mb = 25;  // MiB per bucket; <= 0 or tiny: one bucket per parameter
  bool overlap = true;    // false: launch every bucket after backward (for comparison)
  // Under a pipeline schedule the micro-batches' backwards interleave and the executor reports
  // after_group_backward only on a group's last backward of the step; then only that report
  // marks a group final (not the start of the next group's backward).
  bool pipeline = false;
  // Expert parallelism: the group expert parameters (ParamInfo::expert >= 0) are summed over
  // -- the expert-data-parallel ranks holding the same experts -- instead of dp, and sharded
  // over it by ZeRO; dense ones over dp. Null: everything over dp.
  comm::Communicator* expert_group = nullptr;
  // Every gradient sum over dp (and over edp): fp32, or bf16 on the wire (grad_reduce_dtype.h).
  // With bf16 each bucket's reduced element is round_bf16(sum_r round_bf16(g_r)), the same bits
  // on every rank and for any bucket size; ZeRO 2-3 keep it (widened) as the shard's gradient.
  GradReduceDType reduce_dtype = GradReduceDType::kFp32;
  // The gradient at rest (grad_dtype.h): ZeRO 2-3's shard_grads() in fp32 or 16 bits, each
  // micro-batch's reduced fp32 part folded in with one rounding (the buckets stay fp32 working
  // buffers). ZeRO 0-1 (not under a pipeline): the flat gradient buffer itself is 16-bit
  // (flat_grads16()); each layer group's backward writes into an fp32 working buffer of the
  // group's gradients (group_working_elems), folded into it with one rounding when the group's
  // gradients are final; a bucket's dp sum widens its 16-bit elements into an fp32 wire buffer,
  // sums them (fp32, or bf16 on the wire) and rounds the sum back once.
  GradDType grad_dtype = GradDType::kFp32;
  // Stage 3, --offload optimizer+params: the value shard never lives in memory; flat values, if
  // the model was allocated with them (RankLayout makes none under ZeRO 3), stay until
  // attach_value_store writes this rank's part of them into the store.
  bool offload_values = false;
  // Stages 1-2 in bf16/fp16 (shards_master, zero_master.h): the operand-only parameters' fp32
  // master lives in this rank's shard only and the matmuls read a persistent 16-bit copy.
  bool shard_master = false;
  // With shard_master, --offload optimizer: the master shard is to live in the optimizer's offload
  // store (master()->attach_store once the store exists), the flat values keeping it until then.
  bool offload_master = false;
};

// Buckets as parameter id ranges [first, last] (inclusive), in launch order (the last
// parameters first), each at most cap_elems elements unless a single parameter is larger.
// grad_layout (ZeRO 0-1): ranges of the flat gradient buffer, which holds the trained
// parameters only (a LoRA run's adapters: frozen ones are in no bucket, and an id range may
// step over them); otherwise of the value layout (ZeRO 2-3 cut their buckets from the shards').
struct BucketSpan {
  int first = 0, last = 0;
  int64_t lo = 0, hi = 0;  // flat range
};
std::vector<BucketSpan> assign_buckets(const nn::ParameterSet& params, int64_t cap_elems, bool grad_layout = false);

// ZeRO 0-1 with 16-bit gradients: per layer group g, the parameters whose gradients g's backward writes
// into its fp32 working buffer (its trained parameters; the head group also the tied embedding
// when this stage holds it, which the head's backward writes first), and the most elements any
// group's set holds (one set is live at a time: the reducer's and the planner's count).
std::vector<std::vector<int>> group_working_params(const nn::ParameterSet& params);
int64_t group_working_elems(const nn::ParameterSet& params);

class DataParallel : public nn::ModelHooks {
 public:
  // Sets up shards and releases the flat buffers ZeRO does not keep (values for stage 3,
  // gradients for stages 2-3) where they were made. `params` must be allocated (with or
  // without those flat buffers: nn::FlatBuffers).
  DataParallel(nn::ParameterSet& params, comm::Communicator& dp, MemoryTracker& tracker,
               const DataParallelOptions& options);
  ~DataParallel() override;

  const DataParallelOptions& options() const { return options_; }
  const ShardLayout& layout() const { return layout_; }
  const std::vector<BucketSpan>& buckets() const { return spans_; }
  // Flat ranges the optimizer owns on this rank: everything (stage 0) or the shard's pieces.
  std::vector<FlatRange> optimizer_ranges() const {
    return options_.zero >= 1 ? layout_.pieces() : std::vector<FlatRange>{{0, layout_.total}};
  }

  // ---- the step ----
  void begin_step();  // zeroes gradients, resets timers
  // The micro-batch's token ids (this rank's rows), for the tied embedding's sparse rows.
  void set_tokens(const int32_t* ids, int64_t n) { ids_ = ids, n_ids_ = n; }
  // `last`: gradients are communicated (stage 0/1) on the last micro-batch only.
  void begin_micro_batch(bool last);
  // Launches what backward did not (overlap off), waits for this micro-batch's communication;
  // stage 2/3 accumulate the reduced shard and free the buckets; stage 3 frees gathered groups.
  void end_micro_batch();
  // Sum of squares of the reduced gradient this rank counts for the global norm (stages 2-3:
  // its shard, of parameters for which `owns(id)`; stages 0-1: nothing, the engine counts the
  // replicated full gradient once).
  double shard_grad_sumsq(const std::function<bool(int)>& owns) const;
  // AdamW on this rank's range, then (stages 1-2) all_gather of the updated values.
  void optimizer_step(optim::AdamW& adamw, float lr, float grad_scale);
  // Frees every gathered group (stage 3; e.g. after an evaluation forward).
  void release_all();
  // Seconds blocked on dp communication since begin_step (the exposed part).
  double comm_wait_seconds() const { return wait_s_; }

  // Stages 2-3: this rank's reduced gradient shard, layout().numel() elements in shard order
  // (layout().index(flat)), in options().grad_dtype; null for stages 0-1 (and an empty shard).
  GradShard* shard_grads() { return shard_grads_.empty() ? nullptr : &shard_grads_; }
  // ZeRO 0-1 with 16-bit gradients: the flat gradient buffer (ParamInfo::grad_offset layout),
  // replicated over dp after the step's reduction; null otherwise (the gradients are then
  // ParameterSet::grads()).
  const GradShard* flat_grads16() const { return flat16_on_ ? &flat16_ : nullptr; }
  // ---- stage 3: values live in shards ----
  bool values_sharded() const { return options_.zero >= 3; }
  // Param `id`'s local tensor with this rank's shard elements filled in, zeros elsewhere.
  void read_shard_values(int id, float* local) const;
  // Stores this rank's shard elements of param `id` from a full local tensor.
  void write_shard_values(int id, const float* local);
  // The local elements of param `id` in this rank's shard: [local_begin, local_begin + count),
  // at shard index shard_begin on (count 0: none).
  struct ShardPart {
    int64_t local_begin = 0, count = 0, shard_begin = 0;
  };
  ShardPart shard_part(int id) const;
  // Stores local elements [first, first + count) of param `id`, which lie inside shard_part(id),
  // from `values` (a checkpoint load, a chunk at a time: parallel/layout_state.cpp).
  void write_shard_range(int id, int64_t first, int64_t count, const float* values);
  // Initialises the shard from the logical tensors (the bits ParameterSet::initialize draws),
  // in bounded chunks straight into the shard or the offload store.
  void initialize_shard(uint64_t seed);
  // Stage 3, --offload optimizer+params (options.offload_values): this rank's part of the flat
  // values goes into `store` (the optimizer's moment store holding values, in shard order) and
  // the flat values are freed, so the shard is never in memory; from here on the shard is
  // read from it (gathers, checkpoints) and the optimizer updates it there. `store` must
  // outlive this reducer's last gather.
  void attach_value_store(optim::MomentStore& store);
  bool values_offloaded() const { return value_store_ != nullptr; }
  // ---- stages 1-2, options.shard_master: the sharded fp32 master (zero_master.h) ----
  // Null without it. Parameters it holds() have their values there, not in the flat buffer.
  ShardedMaster* master() { return master_.get(); }
  const ShardedMaster* master() const { return master_.get(); }
  // The 16-bit copy rounded again (r) and gathered if the values changed since it was made
  // (an update, init or load: values_changed); registered with mm. Every dp rank calls it.
  void refresh_weight_copy(kernels::MatmulEngine& mm, const nn::WeightRounding& r);
  // Values were written outside the optimizer (init, load): the copy is remade at the next refresh.
  void values_changed() {
    if (master_) master_->invalidate();
  }
  // --precision bf16: from now until end_weight_copies, each group gathered is also rounded
  // once (r) into a bf16 copy that mm's products read (nn/bf16_weights.h), freed with the group.
  void begin_weight_copies(kernels::MatmulEngine& mm, const nn::WeightRounding& r);
  void end_weight_copies();

  // ---- nn::ModelHooks ----
  void before_group_forward(int group) override;
  void before_group_backward(int group) override;
  void after_group_backward(int group) override;

 private:
  struct Bucket {
    BucketSpan span;
    std::vector<int> groups;  // groups it overlaps
    int pending = 0;
    bool ready = false, launched = false, retired = false;
    FloatBuffer grad;  // stages 2-3: gradient storage while alive
    FloatBuffer recv;  // stages 2-3: this rank's reduced parts, in shard order
    std::vector<FlatRange> recv_parts;  // stages 2-3: the flat range of each part of recv
    std::vector<comm::Work> works;  // one sum, or one per dense / expert run or ZeRO segment
    FloatBuffer wire;  // ZeRO 0-1, 16-bit gradients: the bucket widened to fp32 for its sum
  };
  struct Working {  // ZeRO 0-1, 16-bit gradients: one group's fp32 gradients during its backward
    FloatBuffer buf;
    std::vector<int> ids;     // group_working_params
    std::vector<int> placed;  // those with their gradient in buf now, consecutively
  };
  struct Gathered {  // stage 3: one group's values
    FloatBuffer buf;
    std::vector<comm::Work> works;  // one per ZeRO segment the group overlaps
    int state = 0;  // 0 none, 1 issued, 2 ready
    nn::Bf16WeightCopy copy;  // bf16 weight copies on: made when ready, freed with buf
  };
  void group_final(int g);
  void launch(Bucket& b);
  // Expert parallelism: dense runs over dp, expert runs over edp, summed in place in `data`,
  // which holds the flat gradient element i at data[i - origin].
  void launch_split(Bucket& b, float* data, int64_t origin);
  void retire(Bucket& b);  // stages 2-3: wait, add into the shard, free the bucket
  void ensure_grad_storage(int bucket);
  void wait(comm::Work& w);
  void wait_all(std::vector<comm::Work>& works);
  // The group a ZeRO segment is sharded over.
  comm::Communicator& group_of(const ShardSegment& s) { return s.expert ? *options_.expert_group : dp_; }
  // The sum over `group` in the configured dtype (options_.reduce_dtype).
  comm::Work sum(comm::Communicator& group, std::span<float> buf);
  void finish_tied_rows();  // the sparse the tied embedding rows of the embedding backward
  // ZeRO 0-1, 16-bit gradients.
  void open_working(int g);   // g's working buffer, zeroed, the gradient pointers into it
  void fold_working(int g);   // folded into flat16_ (one rounding each), freed, pointers null
  void finish_wire(Bucket& b);  // the bucket's summed wire rounded back into flat16_
  optim::GradsIn flat_grads_in() const;  // the flat gradients AdamW reads
  // Stage 3 gathering.
  std::vector<int> values_needed(int g, bool backward) const;
  void issue_gather(int g);
  void acquire(int g);
  void release(int g);
  void keep_only(const std::vector<int>& keep);

  nn::ParameterSet& params_;
  comm::Communicator& dp_;
  MemoryTracker& tracker_;
  DataParallelOptions options_;
  ShardLayout layout_;
  std::vector<BucketSpan> spans_;
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_;                  // per parameter id
  std::vector<std::vector<int>> group_buckets_;  // per group
  std::vector<char> group_final_;
  // Stages 2-3: launched, not yet retired; stages 0-1 with 16-bit gradients: wire buffers still
  // being summed. In launch order.
  std::deque<int> in_flight_;
  int current_bwd_ = -1;
  bool armed_ = false;  // this micro-batch communicates
  int tied_ = -1, tied_group_ = -1, head_group_ = -1, embed_group_ = -1;
  bool tied_split_ = false;    // the tied-embedding treatment above is on
  int tied_bucket_ = -1;
  FloatBuffer tied_scratch_;  // the embedding backward's the tied embedding gradient while the tied embedding is reduced
  const int32_t* ids_ = nullptr;
  int64_t n_ids_ = 0;
  FloatBuffer shard_values_;  // stage 3
  GradShard shard_grads_;     // stages 2-3
  bool flat16_on_ = false;    // stages 0-1 with 16-bit gradients
  GradShard flat16_;          // then the flat gradients, grad layout
  std::vector<Working> working_;  // per group
  std::vector<Gathered> gathered_;
  // Stage 3 with the values offloaded: the store, each group's shard slice [first, second) in
  // shard indices, and the reads in flight (or done, until the group's gather has finished).
  optim::MomentStore* value_store_ = nullptr;
  std::vector<FlatRange> group_shard_;
  std::vector<std::unique_ptr<optim::MomentStore::Prefetch>> reads_;
  void prefetch(int g);
  std::unique_ptr<ShardedMaster> master_;  // stages 1-2, options.shard_master
  kernels::MatmulEngine* copy_mm_ = nullptr;  // bf16 weight copies on (stage 3)
  nn::WeightRounding rounding_;
  double wait_s_ = 0.0;
};

}  // namespace trident::parallel
