// The mixture of experts' routing rules beyond the router's probabilities (nn/moe_mlp.h runs
// them): top-k selection with an optional selection bias, the per-sequence capacity rule, and
// the bias's once-per-step update. Plain functions over arrays, so they are tested alone.
//
// Scores (ModelConfig::scoring, Hugging Face's scoring_func): softmax over the E experts
// (Mixtral), or DeepSeek-V3's sigmoid, s_e = sigmoid(logit_e) per expert (fp32 logits as
// always). Everything below that says "probability" reads the score s_e under sigmoid: the
// selection by s + b, the capacity's priority, and the routing weights, s_j / sum of the k
// chosen (norm_topk_prob) or s_j, both times routed_scaling_factor (1 unless set; DeepSeek-V3
// 2.5). The aux loss's P_e under sigmoid is the sequence's mean of s_e / sum_e' s_e' (the
// DeepSeek-V3 paper's normalised affinity of its sequence-wise balance loss, eqs. 17-20).
// Followed: transformers' DeepseekV3TopkRouter (modeling_deepseek_v3.py at huggingface/
// transformers 00b676f8; docs/moe.md), except its masked_fill(0.0) for ineligible groups, which
// lets an ineligible expert outrank an eligible one whose biased score is negative: here, as in
// DeepSeek-V3's own inference/model.py (masked_fill -inf), an ineligible expert is never chosen.
//
// Group-limited routing (n_group > 1; DeepSeek-V3's n_group / topk_group): the experts are
// n_group consecutive groups of E / n_group; a group's score is the sum of its two largest
// s_e + b_e; only the topk_group best groups are eligible, and the top k is chosen among their
// experts. Every tie goes to the lowest id (group or expert), as everywhere.
//
// Aux-loss-free balancing (DeepSeek-V3, Wang et al. 2024 "Auxiliary-Loss-Free Load Balancing"):
// each MoE layer holds a bias b[E] (fp32 state, not trained) that is added to the router
// probabilities only to choose the top k; the routing weights stay the unbiased p_j / sum p.
// After every applied optimizer step, b_e += u sign(mean_e' load_e' - load_e), load_e the
// tokens of the whole global batch that chose e in this layer (integer counts summed exactly
// over the world: parallel/train_step.cpp). A skipped step (non-finite loss) updates nothing.
// Saved as model.layers.N.block_sparse_moe.gate.e_score_correction_bias, DeepSeek-V3's name
// under Mixtral's module path, F32 [E]; absent from a checkpoint (one written without the
// bias) it starts at zero.
//
// Capacity (expert_capacity_factor c > 0). A sequence is never split over ranks or micro-batches
// in this engine (sequence parallelism gathers every row before the MLP), so capacity is per
// sequence: cap = ceil(c T k / E) routed (token, expert) pairs per expert and sequence. Within a
// sequence an expert keeps its pairs by descending router probability p_e (unbiased), ties by
// token position; the rest are dropped: they contribute zero and their weight is not
// renormalised away (the kept weights stay p_j / sum over all k chosen). That follows
// Megatron-Core's --moe-token-drop-policy probs (topk_softmax_with_capacity normalises the top
// k, then multiplies by the capacity mask), except that Megatron ranks by the normalised gate
// and we by p_e, the "router probability"; Switch Transformers keeps by position, HF's
// Mixtral has no capacity. Megatron's capacity, ceil(c tokens k / E), counts a micro-batch's
// tokens on one rank, so its drops change with the layout; per sequence they cannot. The load-balancing loss's f_e counts the
// choices before dropping, as Switch (its density uses the expert mask before capacity) and
// Megatron (tokens_per_expert from the top-k map) do, and so do expert_load and the bias.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nn/architecture.h"
#include "nn/model_config.h"

namespace trident::nn {

// sel[K] = the K experts with the largest p_e + bias_e (bias null: p_e; fp32 sums), ties to the
// lowest id, in ascending id order; with n_group > 1 only among the experts of the topk_group
// groups of largest score (the sum of a group's two largest p_e + bias_e, fp32; ties to the
// lowest group).
void select_experts(const float* p, const float* bias, int64_t E, int64_t K, int32_t* sel, int64_t n_group = 1,
                    int64_t topk_group = 1);

// Routes one token x (C) with the router's weights (E, C): fp32 logits from one fixed-order
// double dot product per expert (so a token's logits do not depend on the rows it shares a call
// with), the scores in double into probs (E): the softmax, or each logit's sigmoid, the top K by
// probs + bias (select_experts, with cfg's groups) into sel (K, ascending), and their routing
// weights (K): p_j / sum of the K chosen when cfg.norm_topk_prob (Mixtral), else p_j, times
// cfg.routed_scaling_factor. Returns log sum_e exp(logit_e), the z-loss's term.
// Training (nn/moe_mlp.cpp) and inference (infer/) both route through this.
double route_token(const float* x, const float* router, const float* bias, const ModelConfig& cfg, float* probs,
                   int32_t* sel, float* weights);

// Routed pairs one expert keeps per sequence of T tokens: ceil(c T K / E); -1 when c is 0
// (no capacity). The product is rounded up in double, then clamped to T (an expert gets at
// most one pair per token).
int64_t expert_capacity(double factor, int64_t T, int64_t K, int64_t E);

// One sequence of T tokens: experts (T, K) the chosen ids, probs (T, E). Sets keep[t K + j] to
// 1 for the pairs each expert keeps under `cap` (see above), 0 for the dropped; returns how
// many were dropped.
int64_t apply_capacity(const int32_t* experts, const float* probs, int64_t T, int64_t E, int64_t K,
                       int64_t cap, uint8_t* keep);

// One layer's bias after an applied step: b_e += rate sign(sum(load) / E - load_e), in fp32
// (the comparison in integers: sign(sum(load) - E load_e)).
void update_router_bias(float* bias, const int64_t* load, int64_t E, double rate);

// A fingerprint of one micro-batch's routing for the metrics' routing_hash: the wrapping 64-bit
// sum over its B sequences of T tokens of a mix of (position t in the sequence, each chosen
// expert id in ascending order, whether capacity kept it). A sum, so it adds up exactly over
// micro-batches and ranks in any order: equal in every layout iff every token (by position)
// made the same choices -- up to reordering whole sequences, which the data order fixes anyway.
uint64_t routing_hash(const int32_t* experts, const uint8_t* keep, int64_t B, int64_t T, int64_t K);

// model.layers.<layer>.block_sparse_moe.gate.e_score_correction_bias
std::string router_bias_name(int layer);
// The bias tensors a checkpoint of `c` holds (one F32 [E] per MoE layer, from first_k_dense on),
// in layer order; none
// unless c.has_router_bias().
std::vector<TensorSpec> router_bias_specs(const ModelConfig& c);

}  // namespace trident::nn
