// Writes what tests/ref/lora_torch_reference_test.py compares against PyTorch: a small GPT-2 or
// Llama with LoRA adapters (frozen base), its weights (adapters included, B made non-zero so A's
// gradient is not trivially zero), and one batch's logits, loss and adapter gradients.
#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <vector>

#include "ckpt/safetensors.h"
#include "core/rng.h"
#include "kernels/kernels.h"
#include "nn/model.h"

using namespace trident;

int main(int argc, char** argv) {
  if (argc != 3 || (std::string(argv[1]) != "gpt2" && std::string(argv[1]) != "llama")) {
    std::cerr << "usage: lora_reference_dump gpt2|llama OUT_DIR\n";
    return 2;
  }
  const bool llama = std::string(argv[1]) == "llama";
  const std::string out = argv[2];
  nn::ModelConfig cfg;
  cfg.n_layer = 2, cfg.n_head = 4, cfg.n_embd = 64, cfg.n_positions = 32, cfg.vocab_size = 101;
  if (llama) {
    cfg.family = nn::Family::kLlama;
    cfg.n_kv_head = 2, cfg.n_inner = 176, cfg.tie_word_embeddings = false;
    // Fused column runs with some weights adapted (q, v of q|k|v; up of gate|up), row-parallel o, down.
    cfg.lora = {.rank = 4, .alpha = 8.0, .targets = {"q", "v", "o", "up", "down"}};
  } else {
    cfg.lora = {.rank = 4, .alpha = 8.0, .targets = {"c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"}};
  }
  cfg.validate();
  kernels::set_num_threads(2);
  const int64_t B = 2, T = 16, N = B * T;

  MemoryTracker tracker;
  nn::Model model(cfg);
  model.allocate(tracker);
  nn::ParameterSet& ps = model.params();
  ps.initialize(1234);
  for (int id = 0; id < ps.size(); ++id) {
    const nn::ParamInfo& p = ps.info(id);
    if (!p.name.ends_with("lora_B.weight")) continue;
    for (int64_t i = 0; i < p.numel; ++i) ps.data(id)[i] = 0.05f * normal_at(77, fnv1a64(p.name), static_cast<uint64_t>(i));
  }
  nn::ModelActivations acts = model.make_activations(tracker, B, T);
  std::vector<int32_t> ids, targets;
  for (int64_t i = 0; i < N; ++i) {
    const auto r = static_cast<int32_t>(uniform_at(5, 0, static_cast<uint64_t>(i)) * 100.0f);
    ids.push_back(r % cfg.vocab_size);
    targets.push_back((r * 3 + 1) % cfg.vocab_size);
  }
  std::vector<std::vector<float>> keep;
  ckpt::SafetensorsWriter w;
  std::vector<float> logits(static_cast<std::size_t>(N * cfg.vocab_size));
  {
    const float* l = model.forward_logits(acts, ids.data(), B, T);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t v = 0; v < cfg.vocab_size; ++v) {
        logits[static_cast<std::size_t>(n * cfg.vocab_size + v)] = l[n * model.padded_vocab_local() + v];
      }
    }
  }
  ps.zero_grads();
  const double loss =
      model.forward_backward(acts, ids.data(), targets.data(), B, T, 1.0f / static_cast<float>(N)) / static_cast<double>(N);
  w.add_tensor("logits", {N, cfg.vocab_size}, logits.data());
  auto add = [&](const std::string& name, const nn::ParamInfo& p, const float* local) {
    keep.emplace_back(static_cast<std::size_t>(shape_numel(p.logical_shape)));
    nn::gather_local_to_logical(p, local, keep.back().data());
    w.add_tensor(name, p.logical_shape, keep.back().data());
  };
  for (int id = 0; id < ps.size(); ++id) {
    const nn::ParamInfo& p = ps.info(id);
    add(p.name, p, ps.data(id));
    if (!p.frozen) add("grad." + p.name, p, ps.grad(id));
  }
  w.write(out + "/dump.safetensors");
  const nlohmann::json meta = {{"family", llama ? "llama" : "gpt2"}, {"n_layer", cfg.n_layer},
                               {"n_head", cfg.n_head}, {"n_kv_head", cfg.kv_heads()},
                               {"rope_theta", cfg.rope_theta}, {"rms_norm_eps", cfg.norm_eps},
                               {"tie_word_embeddings", cfg.tie_word_embeddings}, {"batch_size", B},
                               {"seq_len", T}, {"lora_rank", cfg.lora.rank}, {"lora_alpha", cfg.lora.alpha},
                               {"ids", ids}, {"targets", targets}, {"loss", loss}};
  std::ofstream(out + "/meta.json") << meta.dump();
  fmt::print("loss {:.6f}\n", loss);
  return 0;
}
