// The training loop (see trainer.h).
#include "train/trainer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>

#include "ckpt/base_fingerprint.h"
#include "ckpt/checkpoint.h"
#include "core/check.h"
#include "core/timer.h"
#include "ckpt/checksums.h"
#include "data/batch_sampler.h"
#include "data/shard_meta.h"
#include "data/token_shard.h"
#include "kernels/kernels.h"
#include "nn/lora.h"
#include "optim/lr_schedule.h"
#include "parallel/engine.h"
#include "train/async_checkpoint.h"
#include "train/batch_log.h"
#include "train/checkpointing.h"
#include "train/ckpt_dir_owner.h"
#include "train/flops.h"
#include "train/loss_scaler_state.h"
#include "train/memory_check.h"
#include "train/nonfinite_policy.h"
#include "train/pipeline_report.h"
#include "train/preemption.h"
#include "train/progress.h"
#include "train/qlora.h"

namespace trident::train {

namespace {

// Per layer, the fewest and the most tokens of the step's global batch any one expert got.
nlohmann::json expert_load_json(const std::vector<int64_t>& load, int n_experts) {
  nlohmann::json mn = nlohmann::json::array(), mx = nlohmann::json::array();
  for (std::size_t at = 0; at + static_cast<std::size_t>(n_experts) <= load.size(); at += static_cast<std::size_t>(n_experts)) {
    const auto [lo, hi] = std::minmax_element(load.begin() + static_cast<std::ptrdiff_t>(at),
                                              load.begin() + static_cast<std::ptrdiff_t>(at) + n_experts);
    mn.push_back(*lo);
    mx.push_back(*hi);
  }
  return {{"min", mn}, {"max", mx}};
}

nlohmann::json memory_json(const MemoryTracker& t) {
  nlohmann::json j;
  for (int c = 0; c < static_cast<int>(MemCategory::kCount); ++c) {
    j[mem_category_name(static_cast<MemCategory>(c))] = t.peak(static_cast<MemCategory>(c));
  }
  j["total"] = t.peak_total();
  return j;
}

// Validation loss over the fixed eval batches (same on every rank).
double evaluate(parallel::Engine& engine, const data::EvalBatches& batches) {
  double sum = 0.0;
  for (int64_t b = 0; b < batches.num_batches(); ++b) {
    sum += engine.eval_loss([&](int64_t row, int64_t rows, int32_t* ids, int32_t* targets) {
      batches.fill(b, row, rows, ids, targets);
    });
  }
  return sum / static_cast<double>(batches.num_batches());
}

// The checkpoint a run starts from (--resume, else --init-from), loaded once; none otherwise.
// Its checksums: one process reads every byte of it anyway, so they are folded into those reads
// and checked right after the load (run_training); several ranks read slices, so rank 0 reads the
// files for them alone, before the load (check_source_checksums).
std::optional<ckpt::LoadedCheckpoint> source_checkpoint(const RunConfig& cfg, bool one_process) {
  const std::string& from = cfg.train.resume.empty() ? cfg.train.init_from : cfg.train.resume;
  if (from.empty()) return std::nullopt;
  if (is_quantized_source(from)) return open_quantized_source(from);  // QLoRA (train/qlora.h)
  return ckpt::load_checkpoint(from, one_process ? ckpt::ChecksumCheck::kAfterReads : ckpt::ChecksumCheck::kSkip);
}

// The source's recorded checksums (ckpt/checksums.h), read by rank 0 alone, so ranks that load only
// their slices do not each read every file whole; every rank then fails together if it is corrupt.
// (Ranks on other nodes read the same paths: a node-local copy there is not checked.) Several
// ranks only: one process checks them through its load's own reads.
void check_source_checksums(const ckpt::LoadedCheckpoint& source, comm::Communicator& world) {
  std::string problem;
  if (world.rank() == 0) {
    try {
      ckpt::verify_checksums(source.path, source.trident);
    } catch (const Error& e) {
      problem = e.what();
    }
  }
  comm::throw_if_root_failed(world, problem);  // every rank names the file
}

}  // namespace

int run_training(const RunConfig& cfg, comm::Mesh& mesh) {
  // Installed first, so a signal during set-up still stops the run after its first step.
  const PreemptionHandler preemption(parse_preempt_signals(cfg.train.preempt_signals));
  const bool one_process = mesh.world().size() == 1;
  const std::optional<ckpt::LoadedCheckpoint> source = source_checkpoint(cfg, one_process);
  // Shape flags beside --init-from would be silently dropped: refused unless they restate the
  // checkpoint's model, before its files are read again for their checksums.
  if (!cfg.train.init_from.empty()) check_init_from_shape(source->config, cfg.model, source->path);
  if (source && !one_process) check_source_checksums(*source, mesh.world());
  const bool lead = mesh.rank() == 0;
  if (cfg.train.threads > 0) kernels::set_num_threads(cfg.train.threads);
  comm::check_same_across_ranks(mesh.world(), "the run configuration", run_config_hash(cfg));

  // The shape of a model loaded with --init-from is whatever its config.json says; the
  // objective's weights (--moe-aux-loss-coef) still apply.
  // A LoRA run resumed: its base's shape is the checkpoint's config.json (the base was loaded
  // with --init-from, so [model] never named it).
  const bool from_source = !cfg.train.init_from.empty() || (source && cfg.model.lora_rank > 0);
  // QLoRA: the quantized base, packed (quant/packed_base.h); loaded once, sliced by every rank.
  std::optional<quant::QuantizedModel> packed;
  // Its checksums were checked above, by rank 0 alone.
  if (source && quant::is_quantized_checkpoint(source->path)) {
    packed = quant::load_quantized(source->path, /*check_checksums=*/false);
  }
  nn::ModelConfig model_cfg = from_source ? with_objective_overrides(source->config, cfg.model)
                                          : resolve_model_config(cfg.model);
  if (packed) model_cfg = with_packed_base(model_cfg, {packed->format, packed->group}, source->path);
  // Which base a LoRA run's adapters belong to, recorded in every checkpoint (trident.json
  // lora_base, adapter_config.json base_model_name_or_path).
  const std::string lora_base = !model_cfg.lora.enabled() ? ""
                                : !cfg.train.init_from.empty() ? source->path
                                                               : source->trident.value("lora_base", std::string());
  // Before the memory check and the shards, whose errors would name a symptom of this.
  nn::check_sequence_length(model_cfg, cfg.data.seq_len);
  // The LoRA base's identity (ckpt/base_fingerprint.h), checked when the adapters are applied or
  // merged; computed on the lead rank, which alone writes checkpoints; a resume carries it over.
  const std::string lora_base_fingerprint =
      !model_cfg.lora.enabled() || !lead ? ""
      : !cfg.train.init_from.empty()     ? ckpt::base_fingerprint(*source)
                                         : source->trident.value(ckpt::kLoraBaseFingerprintKey, std::string());
  check_model_fits(model_cfg, cfg, mesh);  // before anything is allocated
  TRI_CHECK(!cfg.data.data.empty(), "no training data: pass --data PREFIX (files PREFIX_train.bin "
                                    "and PREFIX_val.bin, written by `trident prepare`)");
  const data::TokenShard train_shard =
      data::TokenShard::open(cfg.data.data + "_train.bin", model_cfg.vocab_size);
  std::optional<data::TokenShard> val_shard;
  if (cfg.data.eval_every > 0) {
    val_shard = data::TokenShard::open(cfg.data.data + "_val.bin", model_cfg.vocab_size);
  }
  // Which vocabulary the ids are: the shards' meta file says it, config.json records it, and a
  // checkpoint trained on another tokenizer's ids is refused (the same ids would be other text).
  const std::string recorded_tokenizer = source ? source->config.tokenizer : std::string();
  if (const std::optional<std::string> data_tokenizer = data::shard_tokenizer(cfg.data.data)) {
    if (source) {
      data::require_same_tokenizer(source->path, recorded_tokenizer,
                                   fmt::format("the shards {}_*.bin ({}{}) hold", cfg.data.data, cfg.data.data,
                                               data::kShardMetaSuffix),
                                   *data_tokenizer,
                                   fmt::format("tokenize the data with `trident prepare --tokenizer {}`", recorded_tokenizer));
    }
    model_cfg.tokenizer = *data_tokenizer;
  } else {
    model_cfg.tokenizer = recorded_tokenizer;
  }
  // The sampler's one option is its order; the batch shape and the seed are the run's.
  const data::BatchSampler sampler(train_shard, {.batch_size = cfg.data.batch_size,
                                                 .seq_len = cfg.data.seq_len,
                                                 .seed = static_cast<uint64_t>(cfg.train.seed),
                                                 .order = cfg.data.data_order});
  std::optional<data::EvalBatches> eval_batches;
  if (val_shard) eval_batches.emplace(*val_shard, cfg.data.batch_size, cfg.data.seq_len, cfg.data.eval_batches);

  // Held for the whole run: no second run writes into this directory meanwhile.
  std::optional<CheckpointDirOwner> ckpt_owner;
  if (!cfg.train.ckpt_dir.empty()) {
    const int64_t first = cfg.train.resume.empty() ? 0 : std::max<int64_t>(source->step, 0);
    ckpt_owner.emplace(mesh.world(), cfg.train.ckpt_dir, first, cfg.train.keep_last);
  }

  MemoryTracker tracker;
  parallel::Engine engine(mesh, model_cfg, cfg.engine, tracker, cfg.data.batch_size,
                          cfg.data.seq_len, cfg.num_micro_batches());
  engine.set_rounding_seed(static_cast<uint64_t>(cfg.train.seed));
  int64_t start_step = 0;
  int64_t packed_params = 0, packed_bytes = 0;  // the logical base's layer matrices, packed
  if (packed) {
    if (cfg.train.resume.empty()) engine.initialize(cfg.train.seed);  // the adapters, as PEFT's
    load_packed_base(engine, *packed);
    for (const auto& [name, m] : packed->matrices) packed_params += m.rows * m.cols;
    packed_bytes = packed->matrix_bytes();
    packed.reset();  // each rank keeps its slices only
  }
  if (!cfg.train.resume.empty()) {
    // One process: the checksums from the load's own reads, before any step (source_checkpoint).
    const auto load = [&] { start_step = load_into_engine(engine, *source, /*with_optimizer=*/true); };
    if (one_process) source->load_then_verify(load);
    else load();
    if (lead) fmt::print(stderr, "resumed from {} at step {}\n", source->path, start_step);
    if (restore_loss_scaler_state(engine, *source) && lead) {
      fmt::print(stderr, "fp16 loss scale {:g} restored from the checkpoint\n", engine.loss_scaler()->scale());
    }
  } else if (source) {
    // LoRA: the adapters (no checkpoint tensors) start as PEFT's, the base is then loaded over.
    if (model_cfg.lora.enabled() && !model_cfg.packed_base()) engine.initialize(cfg.train.seed);
    const auto load = [&] { load_into_engine(engine, *source, /*with_optimizer=*/false); };
    if (one_process) source->load_then_verify(load);  // as above
    else load();
    if (lead) fmt::print(stderr, "initialised from {}\n", source->path);
  } else {
    engine.initialize(cfg.train.seed);
  }
  TRI_CHECK(start_step <= cfg.train.steps,
            "the checkpoint is at step {} but --steps is {}: nothing to do; raise --steps",
            start_step, cfg.train.steps);

  // The schedule spans the whole run (--steps), also when --stop-after ends this invocation.
  const optim::LrSchedule schedule{.kind = cfg.optim.lr_schedule,
                                   .max_lr = static_cast<float>(cfg.optim.lr),
                                   .min_lr = static_cast<float>(cfg.optim.min_lr_value()),
                                   .warmup_steps = cfg.optim.warmup_steps,
                                   .total_steps = cfg.train.steps};

  const double flops_per_token = nn::training_flops_per_token(model_cfg, cfg.data.seq_len);
  const double peak_flops = measure_sgemm_flops(0.2) * mesh.size();
  if (lead) {
    fmt::print(stderr, "model: {}\n{}\n", model_cfg.describe(), engine.describe());
    if (model_cfg.lora.enabled()) {
      const int64_t adapters = nn::lora_parameter_count(model_cfg), base = model_cfg.num_parameters();
      fmt::print(stderr,
                 "lora: {} adapter parameters trained on a frozen base of {} ({:.3f}%); optimizer state "
                 "(adapters only) {:.1f} KiB on rank 0; base fingerprint {}\n",
                 adapters, base, 100.0 * static_cast<double>(adapters) / static_cast<double>(base),
                 static_cast<double>(tracker.current(MemCategory::kOptimizerState)) / 1024.0,
                 lora_base_fingerprint.empty() ? "unknown" : lora_base_fingerprint);
      if (model_cfg.packed_base()) {
        fmt::print(stderr,
                   "qlora: frozen base's {} layer-matrix parameters packed as {}{}: {:.3f} bytes per parameter "
                   "(fp32: 4), {:.1f} KiB held on rank 0, dequantized one layer at a time\n",
                   packed_params, model_cfg.packed_base_format,
                   model_cfg.packed_base_group > 0 ? fmt::format(" g{}", model_cfg.packed_base_group) : "",
                   static_cast<double>(packed_bytes) / static_cast<double>(std::max<int64_t>(packed_params, 1)),
                   static_cast<double>(tracker.current(MemCategory::kPackedBase)) / 1024.0);
      }
    }
  }

  // Output files may name directories that do not exist yet; the lead rank writes them.
  auto make_parent_directory = [&](const std::string& file) {
    const auto parent = std::filesystem::path(file).parent_path();
    if (lead && !parent.empty()) std::filesystem::create_directories(parent);
  };
  std::ofstream metrics;
  if (lead && !cfg.train.metrics.empty()) {
    make_parent_directory(cfg.train.metrics);
    metrics.open(cfg.train.metrics, start_step > 0 ? std::ios::app : std::ios::trunc);
    TRI_CHECK(metrics.good(), "cannot open the metrics file {} for writing", cfg.train.metrics);
  }
  auto run_state = [&](int64_t step) {
    nlohmann::json state{{"run_config", to_json(cfg)},
                         {"step", step},
                         {"data", {{"order", enum_name(cfg.data.data_order)}, {"next_step", step},
                                   {"seed", cfg.train.seed}}},
                         {"rng", {{"kind", "philox4x32-10, counter-based"}, {"seed", cfg.train.seed}}}};
    add_loss_scaler_state(engine, state);
    if (model_cfg.lora.enabled()) state["lora_base"] = lora_base;
    if (!lora_base_fingerprint.empty()) state[ckpt::kLoraBaseFingerprintKey] = lora_base_fingerprint;
    return state;
  };
  auto save = [&](int64_t step) {
    const std::string dir = save_checkpoint(engine, cfg.train.ckpt_dir, step, run_state(step));
    ckpt_owner->after_save();
    return dir;
  };

  // Declared after the engine and the directory's owner, so a write still in flight when the
  // run ends (an error) finishes before the lock is released.
  std::optional<AsyncCheckpointer> async_ckpt;
  if (cfg.train.async_ckpt && !cfg.train.ckpt_dir.empty()) async_ckpt.emplace(engine, cfg.train.ckpt_dir);

  BatchLog batch_log(cfg.train.batch_log, lead, start_step);
  ProgressLine progress(lead);
  PipelineReport pipeline_report(engine.pipeline());
  if (!cfg.train.pipeline_timeline.empty()) make_parent_directory(cfg.train.pipeline_timeline);
  const int64_t tokens_per_step = static_cast<int64_t>(cfg.data.batch_size) * cfg.data.seq_len;
  Stopwatch run_clock;
  double last_loss = NAN;  // the last step's loss that was finite (applied, or skipped by an fp16 overflow)
  NonfiniteGuard nonfinite(cfg.optim.on_nonfinite, cfg.optim.max_bad_steps);
  int stop_signal = 0;  // the stop signal the ranks agreed on, 0 when none
  // --stop-after ends this invocation early; the schedule still spans --steps.
  int64_t end_step = cfg.train.stop_after > 0 ? std::min<int64_t>(cfg.train.stop_after, cfg.train.steps)
                                                    : cfg.train.steps;
  // A background write that finished: prune (--keep-last) and say so, as after a save.
  auto written = [&](const std::optional<std::string>& dir) {
    if (!dir) return;
    ckpt_owner->after_save();
    progress.note("saved " + *dir);
  };
  for (int64_t step = start_step; step < end_step; ++step) {
    // The schedule follows the updates applied, the data the steps taken: a skipped step
    // (poisoned, or an fp16 overflow) repeats its learning rate at the next step, as
    // Megatron-LM advances its scheduler only after a successful update.
    const float lr = schedule.at(engine.optimizer_step());
    batch_log.record(step, sampler);
    tracker.reset_peaks();
    Stopwatch step_clock;
    const parallel::StepStats stats = engine.train_step(
        [&](int64_t row, int64_t rows, int32_t* ids, int32_t* targets) {
          sampler.fill(step, row, rows, ids, targets);
        },
        lr);
    const double step_s = step_clock.seconds();
    const int64_t done = step + 1;
    if (std::isfinite(stats.loss)) last_loss = stats.loss;
    const double tps = static_cast<double>(tokens_per_step) / step_s;
    nlohmann::json line = {{"step", done},
                           {"loss", stats.loss},
                           {"lr", lr},
                           {"grad_norm", stats.grad_norm},
                           {"clip_scale", stats.clip_scale},
                           {"skipped", stats.skipped},
                           {"tokens", done * tokens_per_step},
                           {"tokens_per_s", tps},
                           {"step_ms", step_s * 1e3},
                           {"mfu", tps * flops_per_token / peak_flops},
                           {"memory", memory_json(tracker)},
                           // The kernel's peak RSS of this process since it started (start-up
                           // included), beside the tracked per-step peaks in "memory".
                           {"peak_rss", process_peak_rss()}};
    if (const auto idle = pipeline_report.record_step()) line["pipeline_idle"] = *idle;
    if (model_cfg.is_moe()) {
      line["aux_loss"] = stats.aux_loss;  // `loss` is the cross-entropy
      if (model_cfg.router_z_loss_coef > 0) line["z_loss"] = stats.z_loss;
      if (model_cfg.expert_capacity_factor > 0) line["dropped_fraction"] = stats.dropped_fraction;
      line["expert_load"] = expert_load_json(stats.expert_load, model_cfg.n_experts);
      nlohmann::json hashes = nlohmann::json::array();  // hex: JSON numbers lose bits past 2^53
      for (const uint64_t h : stats.routing_hash) hashes.push_back(fmt::format("{:016x}", h));
      line["routing_hash"] = hashes;
    }
    if (engine.loss_scaler() != nullptr) line["loss_scale"] = stats.loss_scale;  // this step's
    const bool eval_now = eval_batches && (done % cfg.data.eval_every == 0 || done == end_step);
    if (eval_now) {
      const double val = evaluate(engine, *eval_batches);
      line["val_loss"] = val;
      progress.note(fmt::format("step {}: val_loss {:.4f} (train loss {:.4f})", done, val, stats.loss));
    }
    if (metrics.is_open()) {
      metrics << line.dump() << "\n";
      metrics.flush();
    }
    // A poisoned step was not applied; this stops the run (throws) or notes it on stderr.
    if (const std::string note = nonfinite.record(done, stats); !note.empty()) progress.note(note);
    if (done % cfg.train.log_every == 0 || done == end_step) {
      const double elapsed = run_clock.seconds();
      const double eta = elapsed / static_cast<double>(done - start_step) * static_cast<double>(end_step - done);
      progress.update(done, cfg.train.steps, stats.loss, lr, tps, eta);
    }
    if (async_ckpt) written(async_ckpt->poll());  // a failed write stops the run here
    if (done < end_step && (stop_signal = preemption.agreed_signal(mesh.world())) != 0) {
      end_step = done;  // saved below, like the end of the run
      break;
    }
    if (!cfg.train.ckpt_dir.empty() && cfg.train.ckpt_every > 0 && done % cfg.train.ckpt_every == 0 &&
        done != end_step) {
      if (async_ckpt) {
        written(async_ckpt->start(done, run_state(done)));
        progress.note(fmt::format("writing the checkpoint of step {} in the background (snapshot {:.0f} ms)",
                                  done, async_ckpt->last_snapshot_seconds() * 1e3));
      } else {
        progress.note("saved " + save(done));
      }
    }
  }
  if (async_ckpt && async_ckpt->in_flight()) {
    progress.note(fmt::format("waiting for the checkpoint of step {} being written in the background",
                              async_ckpt->in_flight_step()));
    written(async_ckpt->finish());
  }
  progress.finish();
  std::string saved;
  if (!cfg.train.ckpt_dir.empty() && start_step < end_step) {
    saved = save(end_step);
    if (lead) fmt::print(stderr, "saved {}\n", saved);
  }
  if (lead) {
    // Skipped steps are said: "final loss" of a run that applied nothing would mislead.
    std::string skipped;
    if (nonfinite.total_skipped() + nonfinite.total_overflows() > 0) {
      skipped = fmt::format(" ({} step(s) skipped: {} fp16 overflow(s), {} non-finite)",
                            nonfinite.total_skipped() + nonfinite.total_overflows(),
                            nonfinite.total_overflows(), nonfinite.total_skipped());
    }
    if (start_step >= end_step) {
      fmt::print(stderr, "done: nothing to train, the run is already at step {} of {} (raise --steps to go on)\n",
                 start_step, cfg.train.steps);
    } else {
      fmt::print(stderr, "done: step {} of {}, final loss {:.4f}{}, {:.1f} s\nmemory (peak per rank 0):\n{}"
                 "  {:<16} {} (the kernel's VmHWM of rank 0's process, start-up included)\n",
                 end_step, cfg.train.steps, last_loss, skipped, run_clock.seconds(), tracker.report(),
                 "peak RSS", format_bytes(static_cast<double>(process_peak_rss())));
    }
    fmt::print(stderr, "{}", pipeline_report.summary());
    if (!cfg.train.pipeline_timeline.empty()) {
      pipeline_report.write_svg(cfg.train.pipeline_timeline);
      fmt::print(stderr, "wrote {}\n", cfg.train.pipeline_timeline);
    }
  }
  if (stop_signal == 0) return 0;
  if (lead) {
    fmt::print(stderr, "{}", preempted_message(stop_signal, end_step, cfg.train.steps, saved,
                                               cfg.train.ckpt_dir, mesh.size()));
  }
  return saved.empty() ? kExitPreemptedUnsaved : kExitPreempted;
}

}  // namespace trident::train
