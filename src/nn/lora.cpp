// LoRA targets and adapter declarations (see lora.h).
#include "nn/lora.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "nn/architecture.h"

namespace trident::nn {

std::string lora_module(const ParamDecl& base) {
  const std::string suffix = ".weight";
  const std::string& n = base.name;
  TRI_CHECK(n.size() > suffix.size() && n.ends_with(suffix), "{}: a LoRA base is a module's .weight", n);
  return n.substr(0, n.size() - suffix.size());
}

int64_t lora_in_width(const ParamDecl& base) { return base.in_out ? base.shape.at(0) : base.shape.at(1); }
int64_t lora_out_width(const ParamDecl& base) { return base.in_out ? base.shape.at(1) : base.shape.at(0); }

bool lora_row_parallel(const ParamDecl& base) {
  if (base.split == TpSplit::kReplicated) return false;
  const int out_dim = base.in_out ? 1 : 0;
  return base.dim != out_dim;
}

LoraDecls lora_decls(const ParamDecl& base, int rank) {
  TRI_CHECK(base.shape.size() == 2, "{}: a LoRA base is a matrix", base.name);
  TRI_CHECK(base.split == TpSplit::kReplicated || base.split == TpSplit::kSplit || base.split == TpSplit::kKvHeads,
            "{}: a LoRA base is split by rows or columns", base.name);
  const int64_t in = lora_in_width(base), out = lora_out_width(base);
  const std::string m = lora_module(base);
  // PEFT's optimizer (Hugging Face Trainer) decays every parameter but biases and norms: so do we.
  LoraDecls d{.a = ParamDecl{.name = m + ".lora_A.weight", .shape = {rank, in}, .weight_decay = true,
                             .init_uniform = 1.0f / std::sqrt(static_cast<float>(in)), .lora = true},
              .b = ParamDecl{.name = m + ".lora_B.weight", .shape = {out, rank}, .weight_decay = true,
                             .init_value = 0.0f, .lora = true}};
  if (base.split == TpSplit::kReplicated) return d;
  // The split moves with the dimension it splits: outputs are B's dim 0, inputs A's dim 1.
  ParamDecl& split = lora_row_parallel(base) ? d.a : d.b;
  split.split = base.split;
  split.dim = lora_row_parallel(base) ? 1 : 0;
  split.sections = base.sections;
  split.unit = base.unit;
  return d;
}

std::vector<LoraTarget> selected_lora_targets(const ModelConfig& c, int layer) {
  std::vector<LoraTarget> out;
  if (!c.lora.enabled()) return out;
  for (LoraTarget& t : architecture(c.family).lora_targets(c, layer)) {
    if (std::find(c.lora.targets.begin(), c.lora.targets.end(), t.short_name) != c.lora.targets.end()) {
      out.push_back(std::move(t));
    }
  }
  return out;
}

void validate_lora(const ModelConfig& c) {
  const LoraConfig& l = c.lora;
  TRI_CHECK(l.rank >= 0, "lora rank {} is negative; give --lora-rank r >= 1 (0 turns LoRA off)", l.rank);
  if (!l.enabled()) {
    TRI_CHECK(l.targets.empty(), "--lora-targets {} without --lora-rank: give the adapters' rank (e.g. --lora-rank 8)",
              fmt::join(l.targets, ","));
    return;
  }
  const Architecture& arch = architecture(c.family);
  std::vector<std::string> known;
  for (const LoraTarget& t : arch.lora_targets(c, 0)) known.push_back(t.short_name);
  TRI_CHECK(!l.targets.empty(), "--lora-rank {} without --lora-targets: name the layers to adapt ({} has {})", l.rank,
            family_name(c.family), fmt::join(known, ","));
  TRI_CHECK(l.alpha > 0.0 && std::isfinite(l.alpha), "lora alpha {} must be positive (PEFT's lora_alpha; e.g. 2 r)",
            l.alpha);
  for (std::size_t i = 0; i < l.targets.size(); ++i) {
    const std::string& name = l.targets[i];
    const std::string why = arch.lora_unsupported(name);
    TRI_CHECK(why.empty(), "LoRA target {}: {}", name, why);
    TRI_CHECK(std::find(known.begin(), known.end(), name) != known.end(),
              "unknown LoRA target {} for {}: its targets are {}", name, family_name(c.family), fmt::join(known, ","));
    TRI_CHECK(std::find(l.targets.begin(), l.targets.begin() + static_cast<std::ptrdiff_t>(i), name) ==
                  l.targets.begin() + static_cast<std::ptrdiff_t>(i),
              "LoRA target {} is named twice in --lora-targets", name);
  }
  for (const LoraTarget& t : selected_lora_targets(c, 0)) {
    const int64_t in = lora_in_width(t.base), out = lora_out_width(t.base);
    TRI_CHECK(l.rank <= std::min(in, out),
              "--lora-rank {} is larger than target {} ({} in x {} out) allows: r <= min(in, out) = {}; lower the rank",
              l.rank, t.short_name, in, out, std::min(in, out));
  }
}

void check_lora_tensor_parallel(const ModelConfig& c, int tp) {
  for (const LoraTarget& t : selected_lora_targets(c, 0)) {
    // Key/value heads replicated over tp ranks (tp > heads) would need the replica gradient sum
    // of nn/attention.h for the adapter too: refused rather than approximated.
    if (t.base.split == TpSplit::kKvHeads) {
      const int64_t heads = t.base.shape.at(0) / t.base.unit;
      TRI_CHECK(heads % tp == 0,
                "LoRA target {} has {} key/value heads, fewer than tp {}: adapters on replicated key/value heads "
                "are not supported; use tp <= {} or drop {} from --lora-targets",
                t.short_name, heads, tp, heads, t.short_name);
    }
  }
}

void add_lora(ParameterSet& params, const ModelConfig& c, int layer, int tp_rank, int tp_size) {
  if (!c.lora.enabled()) return;
  check_lora_tensor_parallel(c, tp_size);
  for (const LoraTarget& t : selected_lora_targets(c, layer)) {
    const LoraDecls d = lora_decls(t.base, c.lora.rank);
    add_declared(params, {d.a, d.b}, c, tp_rank, tp_size);
  }
}

int64_t lora_parameter_count(const ModelConfig& c) {
  int64_t n = 0;
  for (const LoraTarget& t : selected_lora_targets(c, 0)) {
    n += c.lora.rank * (lora_in_width(t.base) + lora_out_width(t.base));
  }
  return n * c.n_layer;
}

int64_t lora_scratch_floats(const ModelConfig& c, int tp, int64_t N) {
  int64_t widest = 0;
  for (const LoraTarget& t : selected_lora_targets(c, 0)) {
    const LoraDecls d = lora_decls(t.base, c.lora.rank);
    // Every tp rank holds the same local widths (the splits are even).
    const ParamInfo a = shard_for_tp(d.a, c, 0, tp), b = shard_for_tp(d.b, c, 0, tp);
    const int64_t in = local_shape_of(a.logical_shape, a.shard)[1], out = local_shape_of(b.logical_shape, b.shard)[0];
    widest = std::max(widest, in + out);
  }
  return widest == 0 ? 0 : N * (widest + 3 * static_cast<int64_t>(c.lora.rank));
}

}  // namespace trident::nn
