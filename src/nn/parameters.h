// Parameters: every trainable tensor of a rank, its Hugging Face name, its logical (unsharded)
// shape and how this rank's local slice maps into it. Values and gradients live in one flat
// allocation each (llm.c style), in registration order, grouped by layer so that DDP buckets,
// ZeRO shards and checkpoint slices are just offset ranges. Initialisation draws each
// *logical* element from a counter-based RNG keyed by (seed, name, logical index), so every
// layout starts from bit-identical weights.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/memory.h"
#include "core/tensor.h"

namespace trident::nn {

// A run of `length` logical indices along the split dimension starting at `logical_begin`;
// logical_begin < 0 marks padding (rows that exist locally but not in the logical tensor,
// e.g. the padded vocabulary): zero at init, never saved.
struct Chunk {
  int64_t logical_begin = 0;
  int64_t length = 0;
};

// local tensor = concatenation along `dim` of `chunks` of the logical tensor. No chunks means
// the local tensor is the whole logical tensor (replicated).
struct ShardSpec {
  int dim = 0;
  std::vector<Chunk> chunks;
  bool is_full() const { return chunks.empty(); }
};

// What generic code (the decoder model, the pipeline, the reducer, checkpoints) may need to
// know about a parameter without knowing its name; declared by the architecture (param_decl.h).
enum class ParamRole {
  kOther,
  kTokenEmbedding,     // [vocab, C]; looked up by the embedding; the head's weight when tied
  kPositionEmbedding,  // [positions, C] learned absolute positions (GPT-2)
  kFinalNormWeight,
  kFinalNormBias,
  kLmHead,             // [vocab, C] an untied output projection
};

struct ParamInfo {
  std::string name;      // Hugging Face name, e.g. "h.0.attn.c_attn.weight"
  Shape logical_shape;   // as stored in checkpoints
  Shape local_shape;     // what this rank holds
  ShardSpec shard;
  bool weight_decay = false;  // matrices and embeddings decay; biases and LayerNorm do not
  float init_std = 0.0f;      // > 0: normal(0, init_std); otherwise constant init_value
  float init_value = 0.0f;
  float init_uniform = 0.0f;  // > 0 (init_std 0): uniform on [-init_uniform, init_uniform]
  // Not trained: the base of a LoRA run (nn/lora.h). Layers compute no weight gradient for it
  // (its input gradient still flows) and the optimizer leaves it bitwise as loaded.
  bool frozen = false;
  // A frozen base matrix of a QLoRA run held packed outside the flat buffers
  // (quant/packed_base.h): it takes no room there (numel 0) and no gradient; data() points at
  // its dequantized values only while its layer runs.
  bool packed = false;
  // Whether this tp rank's copy is the one counted in the global gradient norm and saved:
  // false on all but one of the tp ranks that hold identical values (a replicated norm, or a
  // key/value head held by several ranks), so each logical element counts once.
  bool tp_owner = true;
  // tp ranks holding this same slice whose gradients are partial and must be summed (key/value
  // heads replicated because tp > num_key_value_heads); 1 otherwise.
  int tp_replicas = 1;
  ParamRole role = ParamRole::kOther;
  // Used by both the embedding and the LM head (param_decl.h).
  bool tied = false;
  // Read only as a matmul operand (ParamDecl::operand_only).
  bool operand_only = false;
  // The LM head's copy of a tied parameter on a last stage without the embedding: its
  // gradient is summed with the embedding's each step; it is never counted or saved.
  bool tied_copy = false;
  // The mixture-of-experts expert it belongs to (-1: none). Under expert parallelism only the
  // ranks holding that expert have it, and its gradient is reduced over the expert-data-parallel
  // group instead of dp (parallel/ddp_reducer.h).
  int expert = -1;
  // Filled in by ParameterSet:
  int group = 0;         // layer group (embeddings, h.0, ..., ln_f)
  int64_t offset = 0;    // into the flat buffers
  int64_t numel = 0;     // local elements in the flat buffers (0 for a packed one)
  // Into the flat gradient buffer, which holds the trained parameters only: -1 for a frozen one
  // (a LoRA base: no gradient slot, grad() is null; ZeRO-2/3's buckets, cut from the value
  // layout, still give it one). Equal to `offset` when nothing is frozen.
  int64_t grad_offset = -1;
};

// Local shape of a logical tensor under a shard spec.
Shape local_shape_of(const Shape& logical, const ShardSpec& shard);
// Logical flat index of every local element, in local order; -1 for padding.
// Calls fn(local_index, logical_index) for each element.
void for_each_local_element(const ParamInfo& info,
                            const std::function<void(int64_t, int64_t)>& fn);
// Copies the logical tensor's values that this rank holds into `local` (padding set to 0).
void scatter_logical_to_local(const ParamInfo& info, const float* logical, float* local);
// Writes this rank's values into their places in `logical` (padding skipped).
void gather_local_to_logical(const ParamInfo& info, const float* local, float* logical);

// What a parameter group is, for generic code that treats the embedding and the head apart.
enum class GroupRole { kEmbedding, kLayer, kHead };

// Which flat buffers ParameterSet::allocate makes. ZeRO-3 keeps only a shard of the values and
// ZeRO-2/3 only a shard of the gradients (parallel/ddp_reducer.h), so they are never made there:
// building the whole model's values or gradients once, only to free them, would set a start-up
// memory peak (4 bytes a parameter each) far above the steps'.
struct FlatBuffers {
  bool values = true, grads = true;
};

class ParameterSet {
 public:
  // Registration: groups are contiguous in the flat buffers, in registration order.
  int begin_group(std::string name, GroupRole role = GroupRole::kLayer);
  GroupRole group_role(int g) const { return group_roles_.at(static_cast<std::size_t>(g)); }
  int find_group(GroupRole role) const;  // the first group with `role`, or -1
  int add(ParamInfo info);  // returns the parameter's id
  // Allocates values and gradients (zeroed) once all parameters are registered; what `flat`
  // leaves out has null pointers (as after release_flat_values / release_flat_grads). The
  // gradient buffer holds the trained parameters only (grad_numel()): a frozen parameter's
  // grad() is null, so layers skip its gradient.
  void allocate(MemoryTracker& tracker, FlatBuffers flat = {});

  int size() const { return static_cast<int>(infos_.size()); }
  const ParamInfo& info(int id) const { return infos_.at(static_cast<std::size_t>(id)); }
  const std::vector<ParamInfo>& infos() const { return infos_; }
  // The first parameter with `role` (the tied copy included), or -1.
  int find_role(ParamRole role) const;
  // The parameter declared tied (the embedding or its LM-head copy), or -1.
  int find_tied() const;
  int find(const std::string& name) const;  // -1 when absent; O(1) (hashed), so registering
                                            // and looking up L layers' parameters is O(L)

  int num_groups() const { return static_cast<int>(group_names_.size()); }
  const std::string& group_name(int g) const { return group_names_.at(static_cast<std::size_t>(g)); }
  // [begin, end) of a group in the flat buffers.
  int64_t group_begin(int g) const { return group_begin_.at(static_cast<std::size_t>(g)); }
  int64_t group_end(int g) const { return group_end_.at(static_cast<std::size_t>(g)); }

  int64_t total_numel() const { return total_; }
  // Elements of the flat gradient buffer: the trained parameters' (ParamInfo::grad_offset).
  int64_t grad_numel() const { return grad_total_; }
  // allocate() has run (the flat buffers may since have been released by ZeRO).
  bool allocated() const { return value_ptr_.size() == infos_.size() && !infos_.empty(); }
  // Where parameter `id`'s values and gradient live. By default inside the flat buffers
  // (values_.data() + offset); ZeRO (parallel/ddp_reducer.h) may point a parameter at a
  // working buffer it materialises on demand, or at nothing (nullptr) while it is not.
  float* data(int id) { return value_ptr_[static_cast<std::size_t>(id)]; }
  const float* data(int id) const { return value_ptr_[static_cast<std::size_t>(id)]; }
  float* grad(int id) { return grad_ptr_[static_cast<std::size_t>(id)]; }
  const float* grad(int id) const { return grad_ptr_[static_cast<std::size_t>(id)]; }
  void set_data_ptr(int id, float* p) { value_ptr_.at(static_cast<std::size_t>(id)) = p; }
  void set_grad_ptr(int id, float* p) { grad_ptr_.at(static_cast<std::size_t>(id)) = p; }
  // Frees the flat value / gradient buffer (ZeRO-3 / ZeRO-2 keep only shards); every
  // parameter's pointer becomes nullptr until set again.
  void release_flat_values();
  void release_flat_grads();
  // Keeps only the flat value ranges `backed` ([first, second), ascending) in memory, with the
  // values they hold (FloatBuffer's sparse form): the rest of the flat value buffer becomes
  // address space without access, so data() of a parameter there is only a key (ZeRO-1/2's
  // sharded master keeps those values in a shard and the matmuls read their 16-bit copy, found
  // by that address: parallel/zero_master.h).
  void keep_flat_values(const std::vector<std::pair<int64_t, int64_t>>& backed);
  // The flat buffers; empty once released.
  FloatBuffer& values() { return values_; }
  FloatBuffer& grads() { return grads_; }
  const FloatBuffer& values() const { return values_; }
  const FloatBuffer& grads() const { return grads_; }

  // Initialisation from the logical tensors (each parameter's declared init): identical on every layout for one seed.
  void initialize(uint64_t seed);
  // The same for one parameter (into data(id)).
  void initialize(uint64_t seed, int id);
  // Local elements [begin, begin + count) of parameter `id` as initialize() draws them, into
  // out[0, count): the same bits, without the parameter's storage (ZeRO-3 initialises its shard
  // in bounded chunks this way, straight into memory or the offload file).
  void initialize_range(uint64_t seed, int id, int64_t begin, int64_t count, float* out) const;
  void zero_grads() {
    if (!grads_.empty()) grads_.zero();
  }

 private:
  std::vector<ParamInfo> infos_;
  std::unordered_map<std::string, int> ids_;  // name -> id
  std::vector<std::string> group_names_;
  std::vector<GroupRole> group_roles_;
  std::vector<int64_t> group_begin_, group_end_;
  int64_t total_ = 0, grad_total_ = 0;
  FloatBuffer values_, grads_;
  std::vector<float*> value_ptr_, grad_ptr_;  // per parameter id
};

}  // namespace trident::nn
