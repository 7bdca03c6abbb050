// The run configuration: defaults, TOML < flag precedence, error messages, --help, JSON, hash,
// and that every file in configs/ parses.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "ckpt/checkpoint.h"
#include "core/check.h"
#include "train/resume_config.h"
#include "train/run_config.h"
#include "../support/expect_error.h"
#include "../support/temp_dir.h"

namespace trident::train {
namespace {

using trident::test::error_of;

namespace fs = std::filesystem;

RunConfig parse(std::vector<std::string> args) {
  args.insert(args.begin(), "train");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return parse_run_config(static_cast<int>(argv.size()), argv.data());
}

// Writes a TOML file unique to this process and test; removed by the destructor.
struct TempToml {
  fs::path path;
  explicit TempToml(const std::string& text) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path = fs::temp_directory_path() /
           fmt::format("trident_cfg_{}_{}_{}.toml", getpid(), info->name(), counter()++);
    std::ofstream(path) << text;
  }
  ~TempToml() { fs::remove(path); }
  static int& counter() {
    static int n = 0;
    return n;
  }
};


const RunConfig kDefaults;

#define EXPECT_CONTAINS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

TEST(TrainConfig, Defaults) {
  const RunConfig c;
  EXPECT_EQ(c.model.model, "small");
  EXPECT_EQ(c.model.n_layer, 0);
  EXPECT_EQ(c.model.vocab_pad_multiple, 0);
  EXPECT_EQ(c.data.data, "");
  EXPECT_EQ(c.data.data_order, data::DataOrder::kRandom);
  EXPECT_EQ(c.data.seq_len, 64);
  EXPECT_EQ(c.data.batch_size, 8);
  EXPECT_EQ(c.data.grad_accum, 1);
  EXPECT_DOUBLE_EQ(c.optim.lr, 6e-4);
  EXPECT_FALSE(c.optim.min_lr.has_value());
  EXPECT_DOUBLE_EQ(c.optim.min_lr_value(), 6e-5);
  EXPECT_EQ(c.optim.lr_schedule, optim::LrSchedule::Kind::kCosine);
  EXPECT_DOUBLE_EQ(c.engine.adamw.weight_decay, 0.1);
  EXPECT_DOUBLE_EQ(c.engine.adamw.beta1, 0.9);
  EXPECT_DOUBLE_EQ(c.engine.adamw.beta2, 0.95);
  EXPECT_DOUBLE_EQ(c.engine.adamw.eps, 1e-8);
  EXPECT_DOUBLE_EQ(c.engine.grad_clip, 1.0);
  EXPECT_EQ(c.parallel.dp, 1);
  EXPECT_EQ(c.parallel.tp, 1);
  EXPECT_EQ(c.parallel.pp, 1);
  EXPECT_EQ(c.engine.zero, 0);
  EXPECT_EQ(c.engine.schedule, pp::ScheduleKind::kOneFOneB);
  EXPECT_EQ(c.parallel.micro_batches, 0);
  EXPECT_EQ(c.engine.virtual_stages, 1);
  EXPECT_FALSE(c.engine.sequence_parallel);
  EXPECT_DOUBLE_EQ(c.engine.bucket_mb, 25.0);
  EXPECT_TRUE(c.engine.overlap);
  EXPECT_EQ(c.train.seed, 1337);
  EXPECT_EQ(c.train.threads, 0);
  EXPECT_EQ(c.train.ckpt_dir, "");
  EXPECT_EQ(c.num_micro_batches(), 1);

  // Parsing with only the required --data fills in min_lr = lr / 10.
  const RunConfig p = parse({"--data", "d/x"});
  EXPECT_EQ(p.data.data, "d/x");
  ASSERT_TRUE(p.optim.min_lr.has_value());
  EXPECT_DOUBLE_EQ(*p.optim.min_lr, 6e-5);
  EXPECT_DOUBLE_EQ(parse({"--data", "x", "--lr", "1e-3"}).optim.min_lr.value(), 1e-4);
}

// The engine's options are declared once (parallel::EngineOptions): the run config's defaults
// are that struct's, and every key of [parallel], [optim] and [train] that the engine takes
// lands in its own member, not in a neighbour's.
TEST(TrainConfig, EngineOptionsAreTheEnginesOwnStruct) {
  const parallel::EngineOptions d;
  const RunConfig c;
  EXPECT_EQ(c.engine.zero, d.zero);
  EXPECT_EQ(c.engine.schedule, d.schedule);
  EXPECT_EQ(c.engine.virtual_stages, d.virtual_stages);
  EXPECT_EQ(c.engine.balance_stages, d.balance_stages);
  EXPECT_EQ(c.engine.sequence_parallel, d.sequence_parallel);
  EXPECT_EQ(c.engine.recompute, d.recompute);
  EXPECT_EQ(c.engine.precision, d.precision);
  EXPECT_EQ(c.engine.grad_reduce_dtype, d.grad_reduce_dtype);
  EXPECT_EQ(c.engine.bucket_mb, d.bucket_mb);
  EXPECT_EQ(c.engine.overlap, d.overlap);
  EXPECT_EQ(c.engine.adamw.beta1, d.adamw.beta1);
  EXPECT_EQ(c.engine.adamw.beta2, d.adamw.beta2);
  EXPECT_EQ(c.engine.adamw.eps, d.adamw.eps);
  EXPECT_EQ(c.engine.adamw.weight_decay, d.adamw.weight_decay);
  EXPECT_EQ(c.engine.grad_clip, d.grad_clip);

  const RunConfig p = parse({"--data", "x", "--pp", "2", "--zero", "2", "--schedule", "interleaved",
                             "--virtual-stages", "3", "--balance-stages", "--sequence-parallel",
                             "--recompute", "full", "--precision", "bf16", "--bucket-mb", "4",
                             "--no-overlap", "--beta1", "0.8", "--beta2", "0.7", "--eps", "1e-6",
                             "--weight-decay", "0.05", "--grad-clip", "0.5", "--dp", "2",
                             "--grad-reduce-dtype", "bf16"});
  EXPECT_EQ(p.engine.zero, 2);
  EXPECT_EQ(p.engine.grad_reduce_dtype, parallel::GradReduceDType::kBf16);
  EXPECT_EQ(p.engine.schedule, pp::ScheduleKind::kInterleaved);
  EXPECT_EQ(p.engine.virtual_stages, 3);
  EXPECT_TRUE(p.engine.balance_stages);
  EXPECT_TRUE(p.engine.sequence_parallel);
  EXPECT_EQ(p.engine.recompute, nn::Recompute::kFull);
  EXPECT_EQ(p.engine.precision, kernels::Precision::kBf16);
  EXPECT_EQ(p.engine.bucket_mb, 4.0);
  EXPECT_FALSE(p.engine.overlap);
  EXPECT_EQ(p.engine.adamw.beta1, 0.8);
  EXPECT_EQ(p.engine.adamw.beta2, 0.7);
  EXPECT_EQ(p.engine.adamw.eps, 1e-6);
  EXPECT_EQ(p.engine.adamw.weight_decay, 0.05);
  EXPECT_EQ(p.engine.grad_clip, 0.5);
  // The same keys in trident.json.
  const nlohmann::json j = to_json(p);
  EXPECT_EQ(j["parallel"]["schedule"], "interleaved");
  EXPECT_EQ(j["optim"]["beta2"], 0.7);
  EXPECT_EQ(j["train"]["precision"], "bf16");
  EXPECT_EQ(j["train"]["grad_reduce_dtype"], "bf16");
  EXPECT_EQ(run_config_from_json(j).engine.adamw.beta2, 0.7);
  EXPECT_EQ(run_config_from_json(j).engine.grad_reduce_dtype, parallel::GradReduceDType::kBf16);
}

// The fp16 loss-scaling keys ([optim]) and the offload keys ([parallel]) bind straight into the
// engine's own optim::LossScalerConfig and optim::OffloadOptions, defaults included.
TEST(TrainConfig, LossScalerAndOffloadKeysAreTheEnginesOwnStructs) {
  const parallel::EngineOptions d;
  const RunConfig c;
  EXPECT_EQ(c.engine.loss_scaler.initial_scale, d.loss_scaler.initial_scale);
  EXPECT_EQ(c.engine.loss_scaler.min_scale, d.loss_scaler.min_scale);
  EXPECT_EQ(c.engine.loss_scaler.growth_interval, d.loss_scaler.growth_interval);
  EXPECT_EQ(c.engine.loss_scaler.hysteresis, d.loss_scaler.hysteresis);
  EXPECT_EQ(c.engine.offload.kind, optim::OffloadKind::kNone);
  EXPECT_EQ(c.engine.offload.block_kib, d.offload.block_kib);

  const RunConfig p = parse({"--data", "x", "--precision", "fp16", "--initial-loss-scale", "1024",
                             "--min-loss-scale", "2", "--loss-scale-window", "7", "--hysteresis", "3",
                             "--offload", "optimizer", "--offload-dir", "/tmp", "--offload-block-kib", "8"});
  EXPECT_EQ(p.engine.loss_scaler.initial_scale, 1024.0);
  EXPECT_EQ(p.engine.loss_scaler.min_scale, 2.0);
  EXPECT_EQ(p.engine.loss_scaler.growth_interval, 7);
  EXPECT_EQ(p.engine.loss_scaler.hysteresis, 3);
  EXPECT_TRUE(p.engine.offload.optimizer());
  EXPECT_EQ(p.engine.offload.dir, "/tmp");
  EXPECT_EQ(p.engine.offload.block_bytes(), 8 * 1024);
  const RunConfig back = run_config_from_json(to_json(p));
  EXPECT_EQ(back.engine.loss_scaler.growth_interval, 7);
  EXPECT_EQ(back.engine.offload.kind, optim::OffloadKind::kOptimizer);
  EXPECT_EQ(back.engine.offload.block_kib, 8);
}

TEST(TrainConfig, TomlThenFlagsPrecedence) {
  TempToml f(R"(
[data]
data = "from_toml"
batch_size = 16
[optim]
lr = 0.002
lr_schedule = "constant"
[parallel]
dp = 2
overlap = false
[train]
steps = 7
)");
  const RunConfig a = parse({"--config", f.path.string()});
  EXPECT_EQ(a.data.data, "from_toml");
  EXPECT_EQ(a.data.batch_size, 16);
  EXPECT_DOUBLE_EQ(a.optim.lr, 0.002);
  EXPECT_DOUBLE_EQ(*a.optim.min_lr, 0.0002);
  EXPECT_EQ(a.optim.lr_schedule, optim::LrSchedule::Kind::kConstant);
  EXPECT_EQ(a.parallel.dp, 2);
  EXPECT_FALSE(a.engine.overlap);
  EXPECT_EQ(a.train.steps, 7);
  EXPECT_EQ(a.data.seq_len, 64);  // untouched: the default

  // Flags win wherever they appear, before or after --config.
  const RunConfig b = parse({"--lr", "0.005", "--config", f.path.string(), "--batch-size=32",
                             "--overlap", "--steps", "9", "--data-order", "sequential"});
  EXPECT_DOUBLE_EQ(b.optim.lr, 0.005);
  EXPECT_DOUBLE_EQ(*b.optim.min_lr, 0.0005);  // derived from the final lr
  EXPECT_EQ(b.data.batch_size, 32);
  EXPECT_TRUE(b.engine.overlap);
  EXPECT_EQ(b.train.steps, 9);
  EXPECT_EQ(b.data.data_order, data::DataOrder::kSequential);
  EXPECT_EQ(b.data.data, "from_toml");

  const RunConfig c = parse({"--config=" + f.path.string(), "--no-overlap", "--sequence-parallel",
                             "--seed", "42", "--steps", "3", "--steps", "4"});
  EXPECT_FALSE(c.engine.overlap);
  EXPECT_TRUE(c.engine.sequence_parallel);
  EXPECT_EQ(c.train.seed, 42);
  EXPECT_EQ(c.train.steps, 4);  // the last repetition wins
  EXPECT_FALSE(parse({"--data", "x", "--overlap=false"}).engine.overlap);
  EXPECT_FALSE(parse({"--data", "x", "--overlap", "false"}).engine.overlap);

  const RunConfig d = parse({"--data", "x", "--model", "tiny", "--n-layer", "4", "--tp", "2",
                             "--pp", "2", "--dp", "2", "--zero", "3", "--schedule", "interleaved",
                             "--virtual-stages", "2", "--micro-batches", "2", "--bucket-mb", "0.5",
                             "--min-lr", "0", "--warmup-steps", "5", "--weight-decay", "0",
                             "--grad-clip", "0", "--init-from", "hf", "--ckpt-dir", "ck",
                             "--ckpt-every", "10", "--eval-every", "0", "--metrics", "m.jsonl",
                             "--threads", "1", "--grad-accum", "2", "--seq-len", "32"});
  EXPECT_EQ(d.model.model, "tiny");
  EXPECT_EQ(d.model.n_layer, 4);
  EXPECT_EQ(d.engine.zero, 3);
  EXPECT_EQ(d.engine.schedule, pp::ScheduleKind::kInterleaved);
  EXPECT_EQ(d.num_micro_batches(), 2);
  EXPECT_EQ(d.micro_batch_size(), 2);
  EXPECT_DOUBLE_EQ(d.engine.bucket_mb, 0.5);
  EXPECT_DOUBLE_EQ(*d.optim.min_lr, 0.0);
  EXPECT_EQ(d.train.init_from, "hf");
  EXPECT_EQ(d.train.ckpt_every, 10);
  EXPECT_EQ(d.data.seq_len, 32);
  EXPECT_EQ(d.parallel.world_size(), 8);
}

TEST(TrainConfig, UnknownKeySuggestsNearest) {
  TempToml f("[optim]\nlr = 1e-3\nlerning_rate = 1e-3\n");
  const std::string e = error_of([&] { parse({"--config", f.path.string()}); });
  EXPECT_CONTAINS(e, fmt::format("unknown option 'lerning_rate' in {} [optim]; did you mean 'lr'?",
                                 f.path.string()));
  EXPECT_CONTAINS(e, "line 3");

  TempToml typo("[data]\nbatch_sise = 4\n");
  EXPECT_CONTAINS(error_of([&] { parse({"--config", typo.path.string()}); }),
                  "did you mean 'batch_size'?");

  TempToml wrong_table("[train]\nlr = 1e-3\n");
  EXPECT_CONTAINS(error_of([&] { parse({"--config", wrong_table.path.string()}); }),
                  "'lr' belongs in [optim]");

  TempToml far("[optim]\nzzzzzz = 1\n");
  const std::string list = error_of([&] { parse({"--config", far.path.string()}); });
  EXPECT_CONTAINS(list, "the options of [optim] are lr, min_lr, warmup_steps");

  TempToml table("[optimizer]\nlr = 1e-3\n");
  EXPECT_CONTAINS(error_of([&] { parse({"--config", table.path.string()}); }),
                  "unknown table [optimizer]");
  EXPECT_CONTAINS(error_of([&] { parse({"--config", table.path.string()}); }),
                  "did you mean [optim]?");

  TempToml top("lr = 1e-3\n");
  EXPECT_CONTAINS(error_of([&] { parse({"--config", top.path.string()}); }), "put it under [optim]");

  // Flags.
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--lerning-rate", "1"}); }),
                  "unknown option '--lerning-rate'; did you mean '--lr'?");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--batchsize", "1"}); }),
                  "did you mean '--batch-size'?");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--learning-rate", "1"}); }),
                  "did you mean '--lr'?");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--gradient-accumulation-steps", "2"}); }),
                  "did you mean '--grad-accum'?");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--batch_size", "2"}); }), "--batch-size");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--qqqqqqqq", "2"}); }), "--grad-accum");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "stray"}); }), "unexpected argument 'stray'");
}

TEST(TrainConfig, TypeErrors) {
  TempToml f("[optim]\nlr = 'abc'\n");
  const std::string e = error_of([&] { parse({"--config", f.path.string()}); });
  EXPECT_CONTAINS(e, fmt::format("'lr' in {} [optim] (line 2): expected a number, got the string 'abc'",
                                 f.path.string()));

  TempToml g("[data]\nbatch_size = 2.5\n");
  EXPECT_CONTAINS(error_of([&] { parse({"--config", g.path.string()}); }),
                  "expected an integer, got the number 2.5");
  TempToml h("[parallel]\noverlap = 1\n");
  EXPECT_CONTAINS(error_of([&] { parse({"--config", h.path.string()}); }),
                  "expected true or false, got the integer 1");
  TempToml s("[parallel]\nschedule = 3\n");
  EXPECT_CONTAINS(error_of([&] { parse({"--config", s.path.string()}); }),
                  "expected one of gpipe, 1f1b, interleaved");
  TempToml syntax("[optim\nlr = 1\n");
  EXPECT_CONTAINS(error_of([&] { parse({"--config", syntax.path.string()}); }), "TOML syntax error");
  EXPECT_CONTAINS(error_of([] { parse({"--config", "/nonexistent/x.toml"}); }),
                  "cannot read the config file '/nonexistent/x.toml'");

  // An integer is accepted where a number is expected.
  TempToml i("[data]\ndata = \"x\"\n[optim]\nlr = 1\ngrad_clip = 0\n");
  EXPECT_DOUBLE_EQ(parse({"--config", i.path.string()}).optim.lr, 1.0);

  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--lr", "abc"}); }),
                  "--lr: expected a number, got 'abc'");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--steps", "10x"}); }),
                  "--steps: expected an integer, got '10x'");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--steps"}); }), "missing value for --steps");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--seed", "-1"}); }),
                  "--seed = -1 is out of range: must be >= 0");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--overlap=maybe"}); }), "true or false");
}

TEST(TrainConfig, RangeErrors) {
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--lr", "-1e-3"}); }),
                  "--lr = -0.001 is out of range: must be >= 0");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--batch-size", "0"}); }),
                  "--batch-size = 0 is out of range: must be >= 1");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--steps", "0"}); }),
                  "--steps = 0 is out of range: must be >= 1");
  for (const char* flag : {"--dp", "--tp", "--pp"}) {
    EXPECT_CONTAINS(error_of([&] { parse({"--data", "x", flag, "0"}); }), "must be >= 1");
  }
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--zero", "4"}); }),
                  "--zero = 4 is out of range: must be between 0 and 3");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--schedule", "zigzag"}); }),
                  "--schedule: unknown value 'zigzag'; accepted values: gpipe, 1f1b, interleaved");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--lr-schedule", "linear"}); }),
                  "accepted values: cosine, constant");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--data-order", "shuffled"}); }),
                  "accepted values: random, sequential");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--bucket-mb", "0"}); }), "must be > 0");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--bucket-mb", "-2"}); }), "must be > 0");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--beta2", "1"}); }), "must be >= 0 and < 1");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--lr", "inf"}); }), "out of range");
  TempToml neg("[optim]\nlr = -1.0\n");
  EXPECT_CONTAINS(error_of([&] { parse({"--config", neg.path.string()}); }),
                  fmt::format("'lr' in {} [optim] (line 2) = -1 is out of range: must be >= 0",
                              neg.path.string()));

  // Relations that need neither the model nor the world.
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--batch-size", "6", "--dp", "4"}); }),
                  "batch size 6 is not divisible by dp 4: each data-parallel rank takes "
                  "batch_size / dp sequences");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--batch-size", "8", "--grad-accum", "3"}); }),
                  "cannot be split into 3 equal micro-batches");
  EXPECT_CONTAINS(
      error_of([] { parse({"--data", "x", "--grad-accum", "2", "--micro-batches", "4"}); }),
      "micro_batches 4 and grad_accum 2 disagree");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--virtual-stages", "2"}); }),
                  "virtual_stages 2 needs schedule interleaved");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--min-lr", "1"}); }), "min_lr 1 is above lr");
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--pipeline-timeline", "t.svg"}); }),
                  "--pipeline-timeline t.svg needs a pipeline (--pp > 1; this run has pp 1)");
  EXPECT_NO_THROW(parse({"--data", "x", "--pp", "2", "--pipeline-timeline", "t.svg"}));
  EXPECT_CONTAINS(error_of([] { parse({"--data", "x", "--init-from", "a", "--resume", "b"}); }),
                  "give one");
  EXPECT_CONTAINS(error_of([] { parse({}); }), "no training data: give --data PREFIX");
  EXPECT_NO_THROW(parse({"--resume", "ck"}));  // the checkpoint knows its data
}

TEST(TrainConfig, JsonRoundTrip) {
  const RunConfig a = parse({"--data", "d", "--model", "tiny", "--n-embd", "64", "--lr", "3e-4",
                             "--dp", "2", "--tp", "2", "--zero", "2", "--schedule", "gpipe",
                             "--sequence-parallel", "--no-overlap", "--seed", "9223372036854775807",
                             "--data-order", "sequential", "--lr-schedule", "constant",
                             "--metrics", "m \"quoted\".jsonl", "--bucket-mb", "0.1"});
  const nlohmann::json j = to_json(a);
  EXPECT_EQ(j["optim"]["lr"].get<double>(), 3e-4);
  EXPECT_EQ(j["parallel"]["schedule"], "gpipe");
  EXPECT_EQ(j["train"]["seed"].get<int64_t>(), 9223372036854775807ll);
  const RunConfig b = run_config_from_json(nlohmann::json::parse(j.dump()));
  EXPECT_EQ(to_json(b), j);
  EXPECT_EQ(run_config_hash(a), run_config_hash(b));
  EXPECT_EQ(b.train.metrics, "m \"quoted\".jsonl");
  EXPECT_EQ(b.engine.schedule, pp::ScheduleKind::kGPipe);
  EXPECT_FALSE(b.engine.overlap);

  // Missing keys take defaults; unknown keys and bad values are refused.
  const RunConfig c = run_config_from_json({{"optim", {{"lr", 1e-3}}}});
  EXPECT_DOUBLE_EQ(c.optim.lr, 1e-3);
  EXPECT_DOUBLE_EQ(*c.optim.min_lr, 1e-4);
  EXPECT_EQ(c.data.batch_size, 8);
  EXPECT_CONTAINS(error_of([] { run_config_from_json({{"optim", {{"lrr", 1e-3}}}}); }),
                  "did you mean 'lr'?");
  EXPECT_CONTAINS(error_of([] { run_config_from_json({{"data", {{"batch_size", "8"}}}}); }),
                  "expected an integer");
  EXPECT_CONTAINS(error_of([] { run_config_from_json({{"parallel", {{"zero", 9}}}}); }),
                  "out of range");

  // The TOML dump is itself a config that parses back to the same run.
  TempToml dump(format_run_config(a));
  RunConfig d;
  apply_toml_file(d, dump.path.string());
  finalize_run_config(d);
  EXPECT_EQ(to_json(d), j) << format_run_config(a);
  EXPECT_CONTAINS(format_run_config(a), "lr = 0.0003");
  EXPECT_CONTAINS(format_run_config(a), "# default: 0.0006");
}

TEST(TrainConfig, HashEqualityAndInequality) {
  const RunConfig a = parse({"--data", "x"});
  const RunConfig b = parse({"--data", "x"});
  EXPECT_EQ(run_config_hash(a), run_config_hash(b));
  // Every single field changes the hash.
  int fields = 0;
  for_each_field(kDefaults, [&](std::string_view, const auto& f, const auto&) {
    ++fields;
    (void)f;
  });
  std::set<uint64_t> hashes{run_config_hash(a)};
  RunConfig c = a;
  for (int k = 0; k < fields; ++k) {
    RunConfig m = a;
    int i = 0;
    for_each_field(m, [&](std::string_view, const auto& f, auto& x) {
      using T = std::decay_t<decltype(x)>;
      if (i++ != k) return;
      if constexpr (std::is_same_v<T, bool>) x = !x;
      else if constexpr (std::is_same_v<T, std::string>) x += "z";
      else if constexpr (std::is_enum_v<T>) x = static_cast<T>((static_cast<int>(x) + 1) % 2);
      else if constexpr (std::is_same_v<T, std::optional<double>>) x = *x / 2;
      else if constexpr (std::is_same_v<T, std::optional<int>>) x = x.value_or(0) + 1;
      else x = x + 1;
      (void)f;
    });
    hashes.insert(run_config_hash(m));
  }
  EXPECT_EQ(hashes.size(), static_cast<size_t>(fields) + 1);
  c.optim.lr = 6.0000001e-4;
  EXPECT_NE(run_config_hash(a), run_config_hash(c));
}

TEST(TrainConfig, HelpMentionsEveryField) {
  const std::string help = run_config_help();
  for_each_field(kDefaults, [&](std::string_view section, const auto& f, const auto&) {
    std::string flag = "--" + std::string(f.name);
    std::replace(flag.begin(), flag.end(), '_', '-');
    EXPECT_CONTAINS(help, flag + " ");
    EXPECT_CONTAINS(help, std::string(f.help));
    EXPECT_CONTAINS(help, fmt::format("[{}]", section));
  });
  EXPECT_CONTAINS(help, "--config FILE.toml");
  EXPECT_CONTAINS(help, "(default: 0.0006)");
  EXPECT_CONTAINS(help, "(default: lr / 10)");
  EXPECT_CONTAINS(help, "--schedule gpipe|1f1b|interleaved");
  EXPECT_CONTAINS(help, "--zero 0..3");
  EXPECT_CONTAINS(help, "--no-overlap");
  std::vector<std::string> args = {"train", "--lr", "1", "--help"};
  std::vector<char*> argv;
  for (auto& s : args) argv.push_back(s.data());
  EXPECT_TRUE(run_config_wants_help(4, argv.data()));
  EXPECT_FALSE(run_config_wants_help(3, argv.data()));
}

TEST(TrainConfig, ExampleConfigsParse) {
  const fs::path root = fs::path(TRIDENT_SOURCE_DIR);
  int n = 0;
  for (const auto& entry : fs::directory_iterator(root / "configs")) {
    if (entry.path().extension() != ".toml") continue;
    SCOPED_TRACE(entry.path().string());
    const RunConfig c = parse({"--config", entry.path().string()});
    EXPECT_NO_THROW(resolve_model_config(c.model));
    ++n;
  }
  EXPECT_GE(n, 3);
  const RunConfig hybrid = parse({"--config", (root / "configs/hybrid_8rank.toml").string()});
  EXPECT_EQ(hybrid.parallel.world_size(), 8);
  EXPECT_EQ(hybrid.engine.schedule, pp::ScheduleKind::kOneFOneB);
  const RunConfig tiny = parse({"--config", (root / "configs/tiny.toml").string()});
  EXPECT_EQ(resolve_model_config(tiny.model).n_layer, 8);
}

TEST(TrainConfig, ResolveModel) {
  ModelOptions m;
  m.model = "tiny";
  m.n_layer = 2;
  m.vocab_pad_multiple = 128;
  const nn::ModelConfig g = resolve_model_config(m);
  EXPECT_EQ(g.n_layer, 2);
  EXPECT_EQ(g.n_embd, 32);
  EXPECT_EQ(g.vocab_pad_multiple, 128);

  const fs::path dir = fs::temp_directory_path() / fmt::format("trident_cfg_model_{}", getpid());
  fs::create_directories(dir);
  std::ofstream(dir / "config.json")
      << R"({"n_layer": 3, "n_head": 2, "n_embd": 16, "n_positions": 32, "vocab_size": 500})";
  m = ModelOptions{};
  m.model = dir.string();
  const nn::ModelConfig h = resolve_model_config(m);
  EXPECT_EQ(h.n_layer, 3);
  EXPECT_EQ(h.vocab_size, 500);
  m.model = (dir / "config.json").string();
  EXPECT_EQ(resolve_model_config(m).n_positions, 32);
  // A Llama config.json is read as Llama (by model_type, or without it by its keys), never as
  // GPT-2; an incomplete one names the missing key; one that mixes families is refused.
  std::ofstream(dir / "config.json")
      << R"({"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64,
             "max_position_embeddings": 128, "vocab_size": 500})";
  EXPECT_CONTAINS(error_of([&] { resolve_model_config(m); }), "no \"intermediate_size\"");
  std::ofstream(dir / "config.json")
      << R"({"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64,
             "intermediate_size": 96, "max_position_embeddings": 128, "vocab_size": 500})";
  const nn::ModelConfig l = resolve_model_config(m);
  EXPECT_EQ(l.family, nn::Family::kLlama);
  EXPECT_EQ(l.kv_heads(), 2);
  EXPECT_EQ(l.mlp_width(), 96);
  EXPECT_FALSE(l.tie_word_embeddings);  // Hugging Face's LlamaConfig default
  std::ofstream(dir / "config.json")
      << R"({"model_type": "gpt2", "n_layer": 3, "n_head": 2, "n_embd": 16, "n_positions": 32,
             "vocab_size": 500, "num_key_value_heads": 1})";
  EXPECT_CONTAINS(error_of([&] { resolve_model_config(m); }), "holds \"num_key_value_heads\", a llama key");
  std::ofstream(dir / "config.json") << R"({"model_type": "mistral", "vocab_size": 500})";
  EXPECT_CONTAINS(error_of([&] { resolve_model_config(m); }), "model_type \"mistral\", which Trident does not implement");
  fs::remove_all(dir);
  m.model = "gpt3";
  EXPECT_CONTAINS(error_of([&] { resolve_model_config(m); }), "neither a preset");
}

}  // namespace
}  // namespace trident::train

// ---- Which fields were given explicitly, and --resume's merge over the saved run.

namespace trident::train {
namespace {

RunConfig parse_given(std::vector<std::string> args, FieldNames& given) {
  args.insert(args.begin(), "train");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return parse_run_config(static_cast<int>(argv.size()), argv.data(), &given);
}

TEST(TrainConfigGiven, FlagsAndTomlAreRecordedDefaultsAreNot) {
  TempToml f("[optim]\nlr = 0.002\n[train]\nsteps = 7\n");
  FieldNames given;
  const RunConfig c = parse_given({"--config", f.path.string(), "--data", "x", "--zero", "0", "--no-overlap",
                                   "--seq-len=32"}, given);
  // --zero 0 is the default value, but given: a resume must apply it over a saved zero 1.
  EXPECT_EQ(given, (FieldNames{"data", "lr", "overlap", "seq_len", "steps", "zero"}));
  EXPECT_EQ(c.engine.zero, 0);
  FieldNames none;
  (void)parse_given({"--data", "x"}, none);
  EXPECT_EQ(none, (FieldNames{"data"}));
}

TEST(TrainConfigGiven, OverrideFieldsCopiesNamedFieldsAndReportsChanges) {
  RunConfig saved;
  saved.train.steps = 100;
  saved.engine.zero = 1;
  saved.data.data = "old";
  RunConfig given;
  given.train.steps = 200;
  given.engine.zero = 0;
  given.data.data = "old";  // named, unchanged: not reported
  given.optim.lr = 1.0;     // not named: not copied
  const auto changes = override_fields(saved, given, FieldNames{"steps", "zero", "data"});
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_EQ(changes[0].text, "--zero 1 -> 0");  // field order: [parallel] before [train]
  EXPECT_EQ(changes[1].text, "--steps 100 -> 200");
  EXPECT_EQ(saved.train.steps, 200);
  EXPECT_EQ(saved.engine.zero, 0);
  EXPECT_DOUBLE_EQ(saved.optim.lr, RunConfig().optim.lr);
  RunConfig none;
  given.train.ckpt_dir = "ck";
  EXPECT_EQ(override_fields(none, given, FieldNames{"ckpt_dir"})[0].text, "--ckpt-dir '' -> ck");
}

// A step directory as `trident train` writes it, minus real tensors (resume_run_config reads
// only trident.json and config.json).
struct SavedRun {
  trident::test::TempDir dir;
  std::string step_dir;
  RunConfig cfg;
  SavedRun() {
    cfg.model.model = "tiny";
    cfg.data.data = "shards";
    cfg.data.batch_size = 6;
    cfg.data.seq_len = 24;
    cfg.optim.lr = 2e-3;
    cfg.train.steps = 12;
    cfg.train.stop_after = 6;
    cfg.train.ckpt_dir = dir.sub("run");
    cfg.train.metrics = "m.jsonl";
    finalize_run_config(cfg);
    step_dir = dir.sub("run/step_00000006");
    fs::create_directories(step_dir);
    std::ofstream(step_dir + "/model.safetensors") << "x";
    std::ofstream(step_dir + "/config.json") << nn::model_config_to_hf_json(nn::model_preset("tiny")).dump();
    write({{"run_config", to_json(cfg)}, {"step", 6}, {"data", {{"next_step", 6}}}});
    std::ofstream(dir.sub("run/latest")) << "step_00000006\n";
  }
  void write(const nlohmann::json& j) const { std::ofstream(step_dir + "/trident.json") << j.dump(); }
  void write_text(const std::string& text) const { std::ofstream(step_dir + "/trident.json") << text; }
  ResumedConfig resume(std::vector<std::string> flags) const {
    flags.insert(flags.begin(), {"--resume", dir.sub("run")});
    FieldNames given;
    const RunConfig c = parse_given(flags, given);
    return resume_run_config(c, given, c.parallel.world_size());
  }
};

TEST(TrainConfigResume, AloneRestoresEveryField) {
  const SavedRun run;
  const ResumedConfig r = run.resume({});
  RunConfig want = run.cfg;
  want.train.stop_after = 0;  // one invocation's limit
  want.train.resume = run.step_dir;
  EXPECT_EQ(to_json(r.config), to_json(want));
  ASSERT_EQ(r.notes.size(), 1u);
  EXPECT_CONTAINS(r.notes[0], "run configuration from the checkpoint");
}

TEST(TrainConfigResume, GivenFlagsOverrideEachNoted) {
  const SavedRun run;
  const ResumedConfig r = run.resume({"--steps", "20", "--dp", "2", "--metrics", "n.jsonl", "--batch-size", "6"});
  EXPECT_EQ(r.config.train.steps, 20);
  EXPECT_EQ(r.config.parallel.dp, 2);
  EXPECT_EQ(r.config.train.metrics, "n.jsonl");
  EXPECT_EQ(r.config.data.seq_len, 24);  // not given: restored
  EXPECT_EQ(r.notes, (std::vector<std::string>{r.notes[0], "resume: --dp 1 -> 2", "resume: --steps 12 -> 20",
                                               "resume: --metrics m.jsonl -> n.jsonl"}));
}

TEST(TrainConfigResume, ChangesTheWeightsCannotFollowAreRefusedNamingTheFlag) {
  const SavedRun run;
  EXPECT_ERROR_HAS(run.resume({"--n-embd", "64"}), "--n-embd 0 -> 64 cannot be honoured", "n_embd");
  EXPECT_ERROR_HAS(run.resume({"--model", "small"}), "--model tiny -> small cannot be honoured");
  EXPECT_ERROR_HAS(run.resume({"--seq-len", "65"}), "--seq-len 65 cannot be honoured", "n_positions 64");
  EXPECT_NO_THROW(run.resume({"--vocab-pad-multiple", "128"}));  // padding is not in the checkpoint
}

TEST(TrainConfigResume, MalformedTridentJsonNamesTheFileAndField) {
  const SavedRun run;
  const std::string path = run.step_dir + "/trident.json";
  const nlohmann::json good = {{"run_config", to_json(run.cfg)}, {"step", 6}, {"data", {{"next_step", 6}}}};
  run.write_text("{\"step\": 6,");
  EXPECT_ERROR_HAS(run.resume({}), path.c_str(), "not valid JSON");
  for (const nlohmann::json& bad_step : {nlohmann::json("6"), nlohmann::json(-6), nlohmann::json(6.5),
                                         nlohmann::json(nullptr)}) {
    nlohmann::json j = good;
    j["step"] = bad_step;
    run.write(j);
    EXPECT_ERROR_HAS(run.resume({}), path.c_str(), "'step'", "non-negative integer");
  }
  nlohmann::json j = good;
  j["step"] = 7;
  run.write(j);
  EXPECT_ERROR_HAS(run.resume({}), path.c_str(), "'step'", "is 7 but the directory is step_00000006");
  j = good;
  j["data"]["next_step"] = 0;
  run.write(j);
  EXPECT_ERROR_HAS(run.resume({}), path.c_str(), "'data.next_step'");
  j = good;
  j["run_config"]["data"]["batch_size"] = "six";
  run.write(j);
  EXPECT_ERROR_HAS(run.resume({}), path.c_str(), "'run_config'", "'batch_size'", "the string 'six'");
  j = good;
  j.erase("run_config");
  run.write(j);
  EXPECT_ERROR_HAS(run.resume({}), path.c_str(), "no 'run_config'");
  j = good;
  j.erase("step");
  run.write(j);
  EXPECT_ERROR_HAS(run.resume({}), path.c_str(), "no 'step'");
}

}  // namespace
}  // namespace trident::train
