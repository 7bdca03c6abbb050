// The run config's defaults, TOML and JSON, the copy of named fields (--resume), the checks
// between fields, the hash and the model it names. The other things the field lists of
// run_config.h drive live beside it: the command line (run_config_cli.cpp), --help and the
// TOML dump (run_config_text.cpp), option names and suggestions (run_config_names.h), and
// the per-type behaviour of one value (run_config_values.h).
#include "train/run_config.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string_view>
#include <toml++/toml.h>
#include <vector>

#include "ckpt/checkpoint.h"
#include "core/check.h"
#include "core/rng.h"
#include "nn/lora.h"
#include "train/preemption.h"
#include "train/run_config_names.h"
#include "train/run_config_values.h"

namespace trident::train {

using namespace detail;

// ---------------------------------------------------------------------------------------------
// Enums.

namespace {
constexpr std::string_view kNonfiniteNames[] = {"skip", "stop"};
}  // namespace

std::span<const std::string_view> enum_names(MoeScoring) {
  static const std::string_view names[] = {"preset", nn::scoring_name(nn::RouterScoring::kSoftmax),
                                            nn::scoring_name(nn::RouterScoring::kSigmoid)};
  return names;
}

std::span<const std::string_view> enum_names(data::DataOrder) { return data::data_order_names(); }
std::span<const std::string_view> enum_names(optim::LrSchedule::Kind) { return optim::lr_schedule_kind_names(); }
std::span<const std::string_view> enum_names(pp::ScheduleKind) { return pp::schedule_kind_names(); }
std::span<const std::string_view> enum_names(NonfinitePolicy) { return kNonfiniteNames; }
std::span<const std::string_view> enum_names(optim::OffloadKind) { return optim::offload_kind_names(); }
std::span<const std::string_view> enum_names(nn::Recompute) { return nn::recompute_names(); }
std::span<const std::string_view> enum_names(kernels::Precision) { return kernels::precision_names(); }
std::span<const std::string_view> enum_names(parallel::GradReduceDType) { return parallel::grad_reduce_dtype_names(); }
std::span<const std::string_view> enum_names(parallel::GradDType) { return parallel::grad_dtype_names(); }

// ---------------------------------------------------------------------------------------------
// Defaults: each struct's constructor applies the defaults of its field list. Fields held by
// the engine's options take their defaults from that struct's initialisers, so the scratch
// copy below already holds them.

namespace {
struct SetDefault {
  template <class T>
  void operator()(const Field<T>& f, T& x) const { x = f.default_value; }
};
}  // namespace

ModelOptions::ModelOptions() { for_each_field(*this, SetDefault{}); }
DataOptions::DataOptions() { for_each_field(*this, SetDefault{}); }
OptimOptions::OptimOptions() {
  parallel::EngineOptions scratch;
  for_each_field(*this, scratch, SetDefault{});
}
ParallelOptions::ParallelOptions() {
  parallel::EngineOptions scratch;
  for_each_field(*this, scratch, SetDefault{});
}
TrainOptions::TrainOptions() {
  parallel::EngineOptions scratch;
  for_each_field(*this, scratch, SetDefault{});
}

namespace {

std::string line_suffix(const toml::node& n) {
  const auto& begin = n.source().begin;
  return begin.line ? fmt::format(" (line {})", begin.line) : std::string();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// TOML.

void apply_toml(RunConfig& cfg, std::string_view toml_text, std::string_view source_name,
                FieldNames* set_fields) {
  toml::table root;
  try {
    root = toml::parse(toml_text, source_name);
  } catch (const toml::parse_error& e) {
    TRI_FAIL("{}:{}:{}: TOML syntax error: {}", source_name, e.source().begin.line,
             e.source().begin.column, e.description());
  }
  for (auto&& [key, section_node] : root) {
    const std::string section(key.str());
    const toml::node& node = section_node;
    if (!is_section(section)) unknown_table(section, source_name, line_suffix(node));
    const toml::table* table = node.as_table();
    if (!table) {
      TRI_FAIL("'{}' in {} must be a table ([{}] followed by its keys), got {}{}", section,
               source_name, section, describe_toml(node), line_suffix(node));
    }
    for (auto&& [field_key, field_node] : *table) {
      const std::string name(field_key.str());
      const toml::node& value = field_node;
      const std::string where = fmt::format("'{}' in {} [{}]{}", name, source_name, section,
                                            line_suffix(value));
      const bool found = with_field(cfg, section, name, [&](const auto& f, auto& x) {
        assign(f, x, value_from_toml(f, value, where), where);
        if (set_fields) set_fields->insert(std::string(f.name));
      });
      if (!found) unknown_key(name, section, source_name, line_suffix(value));
    }
  }
}

void apply_toml_file(RunConfig& cfg, const std::string& path, FieldNames* set_fields) {
  std::ifstream in(path, std::ios::binary);
  TRI_CHECK(in.good(), "cannot read the config file '{}': {}; configs/ holds examples", path,
            std::strerror(errno));
  std::stringstream text;
  text << in.rdbuf();
  apply_toml(cfg, text.str(), path, set_fields);
}


std::vector<FieldChange> override_fields(RunConfig& dst, const RunConfig& src, const FieldNames& names) {
  std::vector<FieldChange> changes;
  for_each_field(dst, [&](std::string_view section, const auto& f, auto& x) {
    if (!names.contains(f.name)) return;
    for_each_field(src, [&](std::string_view, const auto& g, const auto& y) {
      if constexpr (std::is_same_v<std::decay_t<decltype(x)>, std::decay_t<decltype(y)>>) {
        if (g.name != f.name || x == y) return;
        auto shown = [](const auto& v) {
          const std::string t = value_text(v);
          return t.empty() ? std::string("''") : t;
        };
        changes.push_back({std::string(section), std::string(f.name),
                           fmt::format("--{} {} -> {}", kebab(f.name), shown(x), shown(y))});
        x = y;
      }
    });
  });
  return changes;
}

// ---------------------------------------------------------------------------------------------
// Relations between fields.

void finalize_run_config(RunConfig& cfg) {
  if (!cfg.optim.min_lr) cfg.optim.min_lr = cfg.optim.lr / 10;
  validate_run_config(cfg);
}

void validate_run_config(const RunConfig& cfg) {
  for_each_field(cfg, [](std::string_view section, const auto& f, const auto& x) {
    const std::string problem = range_problem(f, x);
    TRI_CHECK(problem.empty(), "[{}] {} = {} is out of range: {} ({})", section, f.name,
              value_text(x), problem, f.help);
  });
  const ModelOptions& model = cfg.model;
  const DataOptions& d = cfg.data;
  const ParallelOptions& p = cfg.parallel;
  const parallel::EngineOptions& e = cfg.engine;
  const OptimOptions& o = cfg.optim;
  const TrainOptions& t = cfg.train;

  TRI_CHECK(d.batch_size % p.dp == 0,
            "batch size {} is not divisible by dp {}: each data-parallel rank takes "
            "batch_size / dp sequences; use a batch size that is a multiple of {}",
            d.batch_size, p.dp, p.dp);
  TRI_CHECK(p.dp % p.ep == 0,
            "ep {} does not divide dp {}: expert parallelism splits the experts over groups of ep "
            "data-parallel ranks; choose an ep that divides dp (or a dp that is a multiple of {})",
            p.ep, p.dp, p.ep);
  TRI_CHECK(p.micro_batches == 0 || d.grad_accum == 1 || p.micro_batches == d.grad_accum,
            "micro_batches {} and grad_accum {} disagree: both give the micro-batches per step "
            "(micro_batches 0 means grad_accum); set only one",
            p.micro_batches, d.grad_accum);
  const int m = cfg.num_micro_batches();
  TRI_CHECK(cfg.rank_batch() % m == 0,
            "each data-parallel rank's {} sequences (batch_size {} / dp {}) cannot be split into "
            "{} equal micro-batches ({} = {}); use a micro-batch count that divides {}, or a "
            "batch size that is a multiple of dp * {} = {}",
            cfg.rank_batch(), d.batch_size, p.dp, m,
            p.micro_batches > 0 ? "micro_batches" : "grad_accum", m, cfg.rank_batch(), m,
            p.dp * m);
  TRI_CHECK(e.virtual_stages == 1 || e.schedule == pp::ScheduleKind::kInterleaved,
            "virtual_stages {} needs schedule interleaved (got {}): only the interleaved "
            "schedule places several model chunks on one pipeline rank",
            e.virtual_stages, enum_name(e.schedule));
  TRI_CHECK(e.grad_reduce_dtype == parallel::GradReduceDType::kFp32 || p.dp > 1,
            "--grad-reduce-dtype {} needs data parallelism (--dp > 1; this run has dp {}): with one "
            "data-parallel rank no gradient is summed; drop the flag",
            enum_name(e.grad_reduce_dtype), p.dp);
  TRI_CHECK(!e.offload.optimizer() || !e.offload.dir.empty(),
            "--offload {} needs --offload-dir DIR: an existing directory on a local disk with room "
            "for {} bytes per parameter ({})", enum_name(e.offload.kind), e.offload.params() ? 12 : 8,
            e.offload.params() ? "the AdamW moments and the parameter shard" : "the AdamW moments");

  TRI_CHECK(e.offload.block_kib % 4 == 0,
            "offload_block_kib {} is not a multiple of 4: direct I/O moves whole 4 KiB pages; use "
            "{}", e.offload.block_kib, (e.offload.block_kib + 3) / 4 * 4);
  TRI_CHECK(!o.min_lr || *o.min_lr <= o.lr,
            "min_lr {} is above lr {}: the schedule decays from lr down to min_lr", *o.min_lr,
            o.lr);
  TRI_CHECK(model.lora_rank == 0 || !t.init_from.empty() || !t.resume.empty(),
            "--lora-rank {} trains adapters on a frozen base, and this run has none: pass --init-from DIR "
            "(a trained checkpoint or Hugging Face model directory)", model.lora_rank);
  TRI_CHECK(t.init_from.empty() || t.resume.empty(),
            "init_from '{}' and resume '{}' are both set: init_from starts a new run from "
            "weights, resume continues a run; give one",
            t.init_from, t.resume);
  (void)parse_preempt_signals(t.preempt_signals);  // names checked before anything starts
  TRI_CHECK(t.pipeline_timeline.empty() || p.pp > 1,
            "--pipeline-timeline {} needs a pipeline (--pp > 1; this run has pp {})",
            t.pipeline_timeline, p.pp);
  TRI_CHECK(cfg.model.n_positions == 0 || d.seq_len <= cfg.model.n_positions,
            "seq_len {} is longer than n_positions {}: the position table holds n_positions "
            "tokens",
            d.seq_len, cfg.model.n_positions);
}

// ---------------------------------------------------------------------------------------------
// JSON and hash.

nlohmann::json to_json(const RunConfig& cfg) {
  json j = json::object();
  for (const Section& s : kSections) j[std::string(s.name)] = json::object();
  for_each_field(cfg, [&](std::string_view section, const auto& f, const auto& x) {
    j[std::string(section)][std::string(f.name)] = value_to_json(x);
  });
  return j;
}

RunConfig run_config_from_json(const nlohmann::json& j, std::string_view kWhere) {
  TRI_CHECK(j.is_object(), "{} must be an object with the tables {}, got {}", kWhere,
            section_names_text(), describe_json(j));
  RunConfig cfg;
  for (const auto& section_item : j.items()) {
    const std::string& section = section_item.key();
    const json& table = section_item.value();
    if (!is_section(section)) unknown_table(section, kWhere, "");
    TRI_CHECK(table.is_object(), "'{}' in {} must be an object, got {}", section, kWhere,
              describe_json(table));
    for (const auto& item : table.items()) {
      const std::string& name = item.key();
      const json& value = item.value();
      const std::string where = fmt::format("'{}' in {} [{}]", name, kWhere, section);
      const bool found = with_field(cfg, section, name, [&](const auto& f, auto& x) {
        assign(f, x, value_from_json(f, value, where), where);
      });
      if (!found) unknown_key(name, section, kWhere, "");
    }
  }
  finalize_run_config(cfg);
  return cfg;
}

uint64_t run_config_hash(const RunConfig& cfg) { return fnv1a64(to_json(cfg).dump()); }

// ---------------------------------------------------------------------------------------------
// The model.

namespace {

// A mixture-of-experts override from the command line: refused on a dense model, with what the
// flag does in the message, else written into the config.
template <class T>
void override_moe(nn::ModelConfig& g, const std::optional<T>& value, std::string_view flag, std::string_view what,
                  T nn::ModelConfig::*field) {
  if (!value) return;
  TRI_CHECK(g.is_moe(), "{} {} {}, but this model ({}) has no experts; drop the flag", flag, *value, what,
            nn::family_name(g.family));
  g.*field = *value;
}

}  // namespace

nn::ModelConfig resolve_model_config(const ModelOptions& m) {
  namespace fs = std::filesystem;
  nn::ModelConfig g;
  const auto presets = nn::model_preset_names();
  if (std::find(presets.begin(), presets.end(), m.model) != presets.end()) {
    g = nn::model_preset(m.model);
  } else {
    fs::path path = m.model;
    std::error_code ec;
    if (fs::is_directory(path, ec)) path /= "config.json";
    TRI_CHECK(fs::is_regular_file(path, ec),
              "model '{}' is neither a preset ({}) nor a readable config.json", m.model,
              fmt::join(presets, ", "));
    // One reader for every config.json (the checkpoint's): model_type picks the family, and
    // a key the family does not implement is refused, never silently dropped.
    g = ckpt::read_model_config(path.string());
  }
  g = with_shape_overrides(g, m);
  g = with_objective_overrides(g, m);
  g.validate();
  return g;
}

nn::ModelConfig with_shape_overrides(nn::ModelConfig g, const ModelOptions& m) {
  if (m.n_layer) g.n_layer = m.n_layer;
  if (m.n_head) g.n_head = m.n_head;
  if (m.n_kv_head) g.n_kv_head = m.n_kv_head;
  if (m.n_inner) g.n_inner = m.n_inner;
  if (m.n_embd) g.n_embd = m.n_embd;
  if (m.n_positions) g.n_positions = m.n_positions;
  if (m.vocab_size) g.vocab_size = m.vocab_size;
  if (m.vocab_pad_multiple) g.vocab_pad_multiple = m.vocab_pad_multiple;
  override_moe(g, m.moe_first_k_dense, "--moe-first-k-dense", "keeps the first layers of a mixture-of-experts model dense",
               &nn::ModelConfig::first_k_dense);
  override_moe(g, m.moe_shared_experts, "--moe-shared-experts", "adds shared experts to a mixture-of-experts model",
               &nn::ModelConfig::n_shared_experts);
  override_moe(g, m.moe_inner, "--moe-inner", "sets the routed experts' width", &nn::ModelConfig::moe_inner);
  if (m.moe_scoring != MoeScoring::kPreset) {
    TRI_CHECK(g.is_moe(), "--moe-scoring {} sets the router's scoring, but this model ({}) has no experts; drop the flag",
              enum_name(m.moe_scoring), nn::family_name(g.family));
    g.scoring = m.moe_scoring == MoeScoring::kSigmoid ? nn::RouterScoring::kSigmoid : nn::RouterScoring::kSoftmax;
  }
  override_moe(g, m.moe_routed_scaling, "--moe-routed-scaling", "scales the routing weights",
               &nn::ModelConfig::routed_scaling_factor);
  // A group count alone keeps every group eligible (topk_group = n_group, as config.json's null).
  override_moe(g, m.moe_groups, "--moe-groups", "limits the routing to groups of experts", &nn::ModelConfig::n_group);
  if (m.moe_groups && !m.moe_topk_groups) g.topk_group = g.n_group;
  override_moe(g, m.moe_topk_groups, "--moe-topk-groups", "limits the routing to the best groups",
               &nn::ModelConfig::topk_group);
  return g;
}

void check_init_from_shape(const nn::ModelConfig& stored, const ModelOptions& m, const std::string& dir) {
  std::string problem;
  try {
    ckpt::check_same_model_shape(stored, with_shape_overrides(stored, m), dir);
  } catch (const Error& e) {
    problem = e.what();
  }
  TRI_CHECK(problem.empty(),
            "the model-shape flags given cannot be honoured with --init-from {}: the weights fix the model ({}); "
            "drop them (the run trains the checkpoint's model), or start a new model without --init-from. [{}]",
            dir, stored.describe(), problem);
}

nn::ModelConfig with_objective_overrides(nn::ModelConfig g, const ModelOptions& m) {
  if (m.lora_rank > 0 || !m.lora_targets.empty()) {
    g.lora.rank = m.lora_rank;
    g.lora.alpha = m.lora_alpha > 0 ? m.lora_alpha : 2.0 * m.lora_rank;
    g.lora.targets.clear();
    std::string_view rest = m.lora_targets;
    while (!rest.empty()) {
      const std::size_t comma = rest.find(',');
      const std::string_view name = rest.substr(0, comma);
      TRI_CHECK(!name.empty(), "--lora-targets '{}' has an empty name; separate names by single commas",
                m.lora_targets);
      g.lora.targets.emplace_back(name);
      rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
      TRI_CHECK(comma == std::string_view::npos || !rest.empty(), "--lora-targets '{}' ends with a comma",
                m.lora_targets);
    }
    nn::validate_lora(g);
  }
  override_moe(g, m.moe_aux_loss_coef, "--moe-aux-loss-coef", "weights a mixture-of-experts load-balancing loss",
               &nn::ModelConfig::router_aux_loss_coef);
  override_moe(g, m.moe_z_loss_coef, "--moe-z-loss-coef", "weights a mixture-of-experts router z-loss",
               &nn::ModelConfig::router_z_loss_coef);
  override_moe(g, m.moe_bias_update_rate, "--moe-bias-update-rate", "moves a mixture-of-experts router's selection bias",
               &nn::ModelConfig::router_bias_update_rate);
  override_moe(g, m.moe_capacity_factor, "--moe-capacity-factor", "caps the tokens of a mixture-of-experts layer's experts",
               &nn::ModelConfig::expert_capacity_factor);
  return g;
}

}  // namespace trident::train
