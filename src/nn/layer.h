// One transformer layer of any family, as the decoder model (nn/model.h) drives it: explicit
// forward and backward over the residual stream, with its parameters registered in the
// model's ParameterSet by the layer itself (from its architecture's declarations).
#pragma once

#include <cstdint>
#include <memory>

#include "core/memory.h"
#include "kernels/matmul_engine.h"
#include "nn/moe_loss.h"
#include "nn/parameters.h"

namespace trident::nn {

// What a layer's forward saves for its backward, for one micro-batch; the family's own type.
struct LayerActivations {
  virtual ~LayerActivations() = default;
  // The attention core: the (B, NH, T, T) softmax probabilities, recomputable from the saved
  // qkv. Under selective recompute it is left unallocated and the model lends its one shared
  // buffer here for the duration of the layer's forward or backward.
  virtual FloatBuffer& attention_core() = 0;
};

// Buffers the layers, the embedding and the head share (one runs at a time). N = B*T tokens,
// Nl = this rank's rows under sequence parallelism (N without it), C channels.
struct SharedScratch {
  FloatBuffer dln;         // (N, C) gradient w.r.t. a norm's output
  FloatBuffer layer;       // the layers' own gradient scratch (Architecture::layer_scratch_floats)
  // Sequence parallelism only (empty otherwise):
  FloatBuffer gathered;    // (N, C) all-gathered norm output
  FloatBuffer full;        // (N, C) partial sums before reduce_scatter / gathered gradient
  FloatBuffer dln_local;   // (Nl, C) reduce-scattered norm-output gradient
  FloatBuffer norm_grads;  // (4C) partial norm weight/bias gradients, summed over tp
  // LoRA runs only (empty otherwise): one adapter's work (nn/lora_adapter.h, lora_scratch_floats).
  FloatBuffer lora;
  // The owning model's matmuls (nn::Model sets it); null: fp32, as for a layer driven alone.
  kernels::MatmulEngine* matmul = nullptr;
  kernels::MatmulEngine& mm() { return matmul != nullptr ? *matmul : fp32_; }

 private:
  kernels::MatmulEngine fp32_;

 public:

  SharedScratch() = default;
  // sp_local_rows >= 0: allocate the sequence-parallel buffers for Nl = sp_local_rows.
  SharedScratch(MemoryTracker& tracker, int64_t N, int64_t C, int64_t layer_floats,
                int64_t sp_local_rows = -1);
  // Floats the constructor allocates (the memory model's workspace term).
  static int64_t floats(int64_t N, int64_t C, int64_t layer_floats, int64_t sp_local_rows = -1);
};

class Layer {
 public:
  virtual ~Layer() = default;
  // local_rows: Nl under sequence parallelism; < 0 means N. Without save_attention_core the
  // attention core is not allocated (selective recompute; see LayerActivations). `storage`:
  // how the activations read only as matmul operands are saved (nn/saved_operand.h).
  virtual std::unique_ptr<LayerActivations> make_activations(MemoryTracker& tracker, int64_t B,
                                                             int64_t T, int64_t local_rows,
                                                             bool save_attention_core,
                                                             kernels::Precision storage) const = 0;
  // out (Nl, C) = layer(x (Nl, C)); out must not alias x.
  virtual void forward(ParameterSet& params, LayerActivations& acts, float* out, const float* x,
                       int64_t B, int64_t T, SharedScratch& scratch) const = 0;
  // dres (Nl, C): on entry d loss / d out, on exit d loss / d x (updated in place). Parameter
  // gradients accumulate; on return they are complete for this micro-batch on every tp rank.
  virtual void backward(ParameterSet& params, const LayerActivations& acts, SharedScratch& scratch,
                        float* dres, const float* x, int64_t B, int64_t T) const = 0;
  // Selective recompute: refills acts' attention core from its saved qkv with the forward's
  // own kernel (so bitwise as forward wrote it), using the layer's part of the shared scratch
  // for the attention output it discards. Just before backward, which overwrites that scratch.
  virtual void recompute_attention_core(LayerActivations& acts, int64_t B, int64_t T,
                                        SharedScratch& scratch) const = 0;
  // Layers with auxiliary objectives (the mixture of experts' load-balancing loss and router
  // z-loss): their weights in the training objective per unit of the layer's terms (nn/moe_loss.h).
  virtual void set_moe_loss_weights(const MoeLossWeights& /*weights*/) {}
  // The unweighted auxiliary-loss terms of the micro-batches backward ran on since the last
  // call (counted in backward, which runs once per micro-batch, unlike a recomputed forward).
  virtual MoeLossSums take_moe_loss_sums() { return {}; }
  // Mixture of experts: tokens routed to each of the layer's experts by the micro-batches
  // backward ran on since the last call (this rank's tokens); empty for other layers.
  virtual std::vector<int64_t> take_expert_load() { return {}; }
  // Mixture of experts: the wrapping sum of nn::routing_hash over the same micro-batches; 0 for
  // other layers.
  virtual uint64_t take_routing_hash() { return 0; }
  // Mixture of experts: the layer's aux-free selection bias (E floats the model owns and keeps
  // alive; nn/moe_router.h), or null for none. Other layers ignore it.
  virtual void set_router_bias(const float* /*bias*/) {}
};

}  // namespace trident::nn
