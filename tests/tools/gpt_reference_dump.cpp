// Writes what tests/ref/{gpt,llama}_torch_reference_test.py compare against PyTorch: initial
// weights (Hugging Face names, logical layout), step-0 logits and gradients, and 10 AdamW steps
// (losses, grad norms, final weights; Mixtral also the aux losses) of a small GPT-2, Llama or
// Mixtral on fixed random batches.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <vector>

#include "ckpt/safetensors.h"
#include "core/rng.h"
#include "kernels/kernels.h"
#include "kernels/matmul_engine.h"
#include "nn/model.h"
#include "optim/adamw.h"
#include "optim/grad_clip.h"
#include "optim/lr_schedule.h"

using namespace trident;

namespace {

// Adds every parameter (or its gradient) as a logical tensor, padding rows dropped.
void add_logical(ckpt::SafetensorsWriter& w, const nn::ParameterSet& ps, bool grads,
                 const std::string& prefix, std::vector<std::vector<float>>& keep) {
  for (int id = 0; id < ps.size(); ++id) {
    const nn::ParamInfo& p = ps.info(id);
    keep.emplace_back(static_cast<std::size_t>(shape_numel(p.logical_shape)));
    nn::gather_local_to_logical(p, grads ? ps.grad(id) : ps.data(id), keep.back().data());
    w.add_tensor(prefix + p.name, p.logical_shape, keep.back().data());
  }
}

}  // namespace

int main(int argc, char** argv) {
  // --precision: the model's matmul precision, as trident train's (tests/ref/autocast_reference_test.py).
  const std::string usage =
      "usage: gpt_reference_dump [--family gpt2|llama|mixtral] [--n-kv-head K] [--tie-word-embeddings 0|1]\n"
      "                          [--n-experts E --top-k K --norm-topk-prob 0|1 --z-loss-coef Z\n"
      "                           --first-k-dense K --shared-experts S --moe-inner I]\n"
      "                          [--scoring-func softmax|sigmoid --routed-scaling F --n-group G --topk-group G]\n"
      "                          [--bias-rate U --capacity-factor C]\n"
      "                          [--precision fp32|bf16|fp16] OUT_DIR\n";
  kernels::Precision precision = kernels::Precision::kFp32;
  nn::ModelConfig cfg;
  cfg.n_layer = 2, cfg.n_head = 4, cfg.n_embd = 64, cfg.n_positions = 32, cfg.vocab_size = 101;
  std::string out;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 < argc && a == "--family") {
      const std::string f = argv[++i];
      cfg.family = f == "llama" ? nn::Family::kLlama : f == "mixtral" ? nn::Family::kMixtral : nn::Family::kGpt2;
    } else if (i + 1 < argc && a == "--n-experts") {
      cfg.n_experts = std::stoi(argv[++i]);
    } else if (i + 1 < argc && a == "--top-k") {
      cfg.n_experts_per_tok = std::stoi(argv[++i]);
    } else if (i + 1 < argc && a == "--z-loss-coef") {
      cfg.router_z_loss_coef = std::stod(argv[++i]);
    } else if (i + 1 < argc && a == "--bias-rate") {
      cfg.router_bias_update_rate = std::stod(argv[++i]);
    } else if (i + 1 < argc && a == "--capacity-factor") {
      cfg.expert_capacity_factor = std::stod(argv[++i]);
    } else if (i + 1 < argc && a == "--first-k-dense") {
      cfg.first_k_dense = std::stoi(argv[++i]);
    } else if (i + 1 < argc && a == "--shared-experts") {
      cfg.n_shared_experts = std::stoi(argv[++i]);
    } else if (i + 1 < argc && a == "--moe-inner") {
      cfg.moe_inner = std::stoi(argv[++i]);
    } else if (i + 1 < argc && a == "--scoring-func") {
      cfg.scoring = std::string(argv[++i]) == "sigmoid" ? nn::RouterScoring::kSigmoid : nn::RouterScoring::kSoftmax;
    } else if (i + 1 < argc && a == "--routed-scaling") {
      cfg.routed_scaling_factor = std::stod(argv[++i]);
    } else if (i + 1 < argc && a == "--n-group") {
      cfg.n_group = std::stoi(argv[++i]);
    } else if (i + 1 < argc && a == "--topk-group") {
      cfg.topk_group = std::stoi(argv[++i]);
    } else if (i + 1 < argc && a == "--norm-topk-prob") {
      cfg.norm_topk_prob = std::string(argv[++i]) == "1";
    } else if (i + 1 < argc && a == "--n-kv-head") {
      cfg.n_kv_head = std::stoi(argv[++i]);
    } else if (i + 1 < argc && a == "--tie-word-embeddings") {
      cfg.tie_word_embeddings = std::string(argv[++i]) == "1";
    } else if (i + 1 < argc && a == "--precision") {
      const std::string v = argv[++i];
      const auto names = kernels::precision_names();
      const auto at = std::find(names.begin(), names.end(), v);
      if (at == names.end()) {
        std::cerr << usage;
        return 2;
      }
      precision = static_cast<kernels::Precision>(at - names.begin());
    } else if (out.empty() && !a.starts_with("--")) {
      out = a;
    } else {
      std::cerr << usage;
      return 2;
    }
  }
  if (out.empty()) {
    std::cerr << usage;
    return 2;
  }
  if (cfg.family != nn::Family::kGpt2) {
    // The shape tests/ref/llama_torch_reference_test.py expects (its TORCH_FP32_SHAPE).
    cfg.n_inner = 176, cfg.rope_theta = 10000.0, cfg.norm_eps = 1e-5;
    // Mixtral: a large load-balancing weight, so that its share of the router's gradient is
    // well above the fp32 bound and a wrong aux gradient shows.
    if (cfg.family == nn::Family::kMixtral) cfg.router_aux_loss_coef = 0.5;
  } else {
    cfg.tie_word_embeddings = true;
  }
  kernels::set_num_threads(2);
  const int64_t B = 4, T = 16, N = B * T, steps = 10;
  const float lr = 3e-3f, min_lr = 3e-4f, grad_clip = 2.4f;  // between the steps' norms: some steps clip, some do not
  const int64_t warmup = 2;

  MemoryTracker tracker;
  nn::Model model(cfg);
  model.set_precision(precision);
  model.allocate(tracker);
  model.params().initialize(1234);
  nn::ModelActivations acts = model.make_activations(tracker, B, T);
  nn::ParameterSet& ps = model.params();
  // The engine's weighting (parallel/rank_layout.cpp): coef per MoE layer and per sequence.
  const int moe_layers = cfg.moe_layers();
  if (cfg.is_moe()) {
    model.set_moe_loss_weights({static_cast<float>(cfg.router_aux_loss_coef / (moe_layers * B)),
                                static_cast<float>(cfg.router_z_loss_coef / (moe_layers * B * T))});
  }

  // The optimizer settings the reference replays are the ones this AdamW actually uses (the
  // kernel takes them rounded to float).
  const optim::AdamWConfig adam_cfg{};
  nlohmann::json meta = {{"n_layer", cfg.n_layer}, {"n_head", cfg.n_head}, {"n_kv_head", cfg.kv_heads()},
                         {"rope_theta", cfg.rope_theta}, {"rms_norm_eps", cfg.norm_eps},
                         {"tie_word_embeddings", cfg.tie_word_embeddings}, {"batch_size", B},
                         {"seq_len", T}, {"lr", lr}, {"min_lr", min_lr},
                         {"warmup_steps", warmup}, {"grad_clip", grad_clip},
                         {"weight_decay", static_cast<float>(adam_cfg.weight_decay)},
                         {"beta1", static_cast<float>(adam_cfg.beta1)},
                         {"beta2", static_cast<float>(adam_cfg.beta2)},
                         {"eps", static_cast<float>(adam_cfg.eps)}};
  if (cfg.is_moe()) {
    meta["n_experts"] = cfg.n_experts;
    meta["top_k"] = cfg.n_experts_per_tok;
    meta["norm_topk_prob"] = cfg.norm_topk_prob;
    meta["router_aux_loss_coef"] = cfg.router_aux_loss_coef;
    meta["router_z_loss_coef"] = cfg.router_z_loss_coef;
    meta["first_k_dense"] = cfg.first_k_dense;
    meta["n_shared_experts"] = cfg.n_shared_experts;
    meta["router_bias_update_rate"] = cfg.router_bias_update_rate;
    meta["expert_capacity_factor"] = cfg.expert_capacity_factor;
    meta["moe_intermediate_size"] = cfg.expert_width();
    meta["scoring_func"] = nn::scoring_name(cfg.scoring);
    meta["routed_scaling_factor"] = cfg.routed_scaling_factor;
    meta["n_group"] = cfg.n_group;
    meta["topk_group"] = cfg.topk_group;
  }
  if (cfg.has_router_bias()) {
    // A preset nonzero bias (as a checkpoint would hold), large against the initial router's
    // spread of probabilities, so that it changes which experts many tokens choose.
    std::vector<float> bias(static_cast<std::size_t>(cfg.n_layer * cfg.n_experts));
    for (std::size_t i = 0; i < bias.size(); ++i) bias[i] = 0.01f * static_cast<float>(static_cast<int>((i * 7 + 3) % 5) - 2);
    model.set_router_bias(bias);
    meta["router_bias_init"] = bias;
  }
  std::vector<std::vector<int32_t>> ids(steps), targets(steps);
  for (int64_t s = 0; s < steps; ++s) {
    for (int64_t i = 0; i < N; ++i) {
      // A learnable pattern (target = next id of a cycle) so the loss visibly moves.
      const auto r = static_cast<int32_t>(uniform_at(5, static_cast<uint64_t>(s), static_cast<uint64_t>(i)) * 100.0f);
      ids[s].push_back(r % cfg.vocab_size);
      targets[s].push_back((r * 3 + 1) % cfg.vocab_size);
    }
    meta["batches"].push_back({{"ids", ids[s]}, {"targets", targets[s]}});
  }
  {
    ckpt::SafetensorsWriter w;
    std::vector<std::vector<float>> keep;
    add_logical(w, ps, false, "", keep);
    w.write(out + "/init.safetensors");
  }
  // Step-0 logits (real vocabulary columns only) before the fused loss overwrites them.
  std::vector<float> logits(static_cast<std::size_t>(N * cfg.vocab_size));
  {
    const float* l = model.forward_logits(acts, ids[0].data(), B, T);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t v = 0; v < cfg.vocab_size; ++v) logits[static_cast<std::size_t>(n * cfg.vocab_size + v)] = l[n * model.padded_vocab_local() + v];
    }
    model.take_moe_loss_sums();  // this forward's aux terms and routing are not step 0's
    std::vector<int64_t> discard(static_cast<std::size_t>(cfg.n_layer * cfg.n_experts), 0);
    if (cfg.is_moe()) model.take_expert_load(discard);
  }
  optim::AdamW adam(ps, tracker, adam_cfg);
  optim::LrSchedule sched{optim::LrSchedule::Kind::kCosine, lr, min_lr, warmup, steps};
  for (int64_t s = 0; s < steps; ++s) {
    ps.zero_grads();
    const double loss = model.forward_backward(acts, ids[s].data(), targets[s].data(), B, T, 1.0f / static_cast<float>(N)) / static_cast<double>(N);
    const double norm = std::sqrt(kernels::sum_squares(ps.grads().data(), ps.total_numel()));
    if (s == 0) {
      ckpt::SafetensorsWriter w;
      std::vector<std::vector<float>> keep;
      w.add_tensor("logits", {N, cfg.vocab_size}, logits.data());
      add_logical(w, ps, true, "grad.", keep);
      w.write(out + "/step0.safetensors");
    }
    adam.step(ps.values().data(), ps.grads().data(), sched.at(s), optim::clip_scale(norm, grad_clip));
    meta["losses"].push_back(loss);
    if (cfg.is_moe()) {
      const nn::MoeLossSums sums = model.take_moe_loss_sums();
      meta["aux_losses"].push_back(sums.aux / static_cast<double>(moe_layers * B));
      meta["z_losses"].push_back(sums.z / static_cast<double>(moe_layers * B * T));
      std::vector<int64_t> load(static_cast<std::size_t>(cfg.n_layer * cfg.n_experts), 0);
      model.take_expert_load(load);
      std::vector<int64_t> moe_load(load.begin() + static_cast<std::ptrdiff_t>(cfg.first_k_dense) * cfg.n_experts, load.end());
      meta["expert_load"].push_back(moe_load);  // (MoE layers, E) tokens routed to each expert
      meta["dropped"].push_back(static_cast<int64_t>(sums.dropped));  // pairs over capacity, all layers
      if (cfg.has_router_bias()) {  // the engine's rule (parallel/train_step.cpp): after the update
        model.update_router_bias(load);
        meta["router_biases"].push_back(model.router_bias());
      }
    }
    meta["grad_norms"].push_back(norm);
    fmt::print("step {} loss {:.6f} grad_norm {:.6f} lr {:.2e}\n", s, loss, norm, sched.at(s));
  }
  {
    ckpt::SafetensorsWriter w;
    std::vector<std::vector<float>> keep;
    add_logical(w, ps, false, "", keep);
    w.write(out + "/final.safetensors");
  }
  std::ofstream(out + "/meta.json") << meta.dump();
  return 0;
}
