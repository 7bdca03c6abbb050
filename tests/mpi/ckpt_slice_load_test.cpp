// Checkpoint loads read only what each rank keeps (issue 14): under ZeRO-3 a rank reads its shard's
// part of every tensor, under ZeRO >= 1 its part of the moments, under tp / pp its slices and
// stages, a bounded piece at a time, straight into the shard, the flat buffer or the offload
// file (parallel/layout_state.h load_param_from). Checked per layout against the state saved:
// the loaded weights and both AdamW moments are bitwise those saved, the next step's loss too;
// and by the bytes each rank read from the files (SafetensorsReader::bytes_read): under a
// dp-only ZeRO-3 layout every logical element is read by exactly one rank (the ranks' sum is the
// file's data), under ZeRO >= 1 every moment element, and no rank of a sharded layout reads a
// whole file. Loaded twice: through train::load_into_engine (4 MiB pieces) and directly with
// 777-element pieces, so pieces cross runs, tensors and the 16 KiB offload blocks.
// ranks: 1 2 4
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "ckpt/checkpoint.h"
#include "comm/mesh.h"
#include "comm/mpi_backend.h"
#include "mpi_gtest_main.h"
#include "nn/lora_checkpoint.h"
#include "nn/model_config.h"
#include "parallel/engine.h"
#include "synthetic_batch.h"
#include "train/checkpointing.h"

namespace trident::parallel {
namespace {

constexpr int64_t kBatch = 8, kSeq = 16;
constexpr float kLr = 1e-3f;
using optim::OffloadKind;

struct Layout {
  comm::MeshShape shape;  // pp, dp, tp
  int zero;
  OffloadKind offload;
  std::string name;
};

int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

bool rank0() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r == 0;
}

std::vector<Layout> layouts() {
  if (world_size() == 1) {
    return {{{1, 1, 1}, 0, OffloadKind::kNone, "one rank"},
            {{1, 1, 1}, 3, OffloadKind::kOptimizerParams, "zero3 optimizer+params"}};
  }
  if (world_size() == 2) {
    return {{{1, 2, 1}, 3, OffloadKind::kNone, "dp2 zero3"},
            {{1, 2, 1}, 3, OffloadKind::kOptimizerParams, "dp2 zero3 optimizer+params"},
            {{1, 2, 1}, 1, OffloadKind::kOptimizer, "dp2 zero1 optimizer"},
            {{1, 1, 2}, 0, OffloadKind::kNone, "tp2"},
            {{2, 1, 1}, 0, OffloadKind::kNone, "pp2"}};
  }
  return {{{1, 4, 1}, 3, OffloadKind::kOptimizerParams, "dp4 zero3 optimizer+params"},
          {{1, 2, 2}, 3, OffloadKind::kOptimizerParams, "dp2 tp2 zero3 optimizer+params"},
          {{2, 2, 1}, 3, OffloadKind::kNone, "pp2 dp2 zero3"}};
}

// A fresh directory made by rank 0, its name known to every rank.
std::string shared_temp_dir() {
  std::vector<char> name(256, 0);
  if (rank0()) {
    std::string t = (std::filesystem::temp_directory_path() / "trident_slice_load_XXXXXX").string();
    EXPECT_NE(mkdtemp(t.data()), nullptr);
    std::copy(t.begin(), t.end(), name.begin());
  }
  MPI_Bcast(name.data(), static_cast<int>(name.size()), MPI_CHAR, 0, MPI_COMM_WORLD);
  return name.data();
}

EngineOptions options(const Layout& l, const std::string& offload_dir) {
  EngineOptions o;
  o.zero = l.zero;
  o.offload.kind = l.offload;
  o.offload.dir = offload_dir;
  o.offload.block_kib = 16;  // several blocks even for tiny: pieces cross them
  return o;
}

// Weights and both moments by name, gathered to world rank 0, and the Adam step.
std::map<std::string, std::vector<float>> gather_state(Engine& e) {
  std::map<std::string, std::vector<float>> s;
  for (const ckpt::TensorSpec& spec : nn::model_tensor_specs(e.config())) {
    const auto n = static_cast<std::size_t>(shape_numel(spec.shape));
    std::vector<float> v(n), m(n), q(n);
    e.gather_param(spec.name, spec.shape, v.data());
    e.gather_optimizer_state(spec.name, spec.shape, 0, m.data());
    e.gather_optimizer_state(spec.name, spec.shape, 1, q.data());
    s[spec.name] = std::move(v);
    s[spec.name + ".exp_avg"] = std::move(m);
    s[spec.name + ".exp_avg_sq"] = std::move(q);
  }
  s["adam step"] = {static_cast<float>(e.optimizer_step())};
  return s;
}

// The names whose bits differ (rank 0 compares; other ranks' gathers hold nothing).
std::vector<std::string> differences(const std::map<std::string, std::vector<float>>& a,
                                     const std::map<std::string, std::vector<float>>& b) {
  std::vector<std::string> out;
  for (const auto& [name, va] : a) {
    if (!rank0() && name != "adam step") continue;
    const std::vector<float>& vb = b.at(name);
    if (va.size() != vb.size() || std::memcmp(va.data(), vb.data(), va.size() * sizeof(float)) != 0) {
      out.push_back(name);
    }
  }
  return out;
}

uint64_t data_bytes(const std::vector<ckpt::TensorInfo>& tensors) {
  uint64_t n = 0;
  for (const ckpt::TensorInfo& t : tensors) n += t.end - t.begin;
  return n;
}

uint64_t sum_over_ranks(uint64_t x) {
  unsigned long long in = x, out = 0;
  MPI_Allreduce(&in, &out, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
  return out;
}

// The state of `e` loaded from `ck` with `piece`-element pieces through the engine's own entry
// points (what load_into_engine does, with another piece size).
void load_with_pieces(Engine& e, const ckpt::LoadedCheckpoint& ck, int64_t piece) {
  for (const auto& spec : nn::model_tensor_specs(e.config())) {
    e.load_param_from(
        spec.name, [&](int64_t b, int64_t n, float* d) { ck.model.read_range(spec.name, spec.shape, b, n, d); },
        piece);
  }
  for (const auto& spec : nn::trained_tensor_specs(e.config())) {
    for (int kind = 0; kind < 2; ++kind) {
      const std::string name = kind == 0 ? ckpt::exp_avg_name(spec.name) : ckpt::exp_avg_sq_name(spec.name);
      e.load_optimizer_state_from(
          spec.name, kind, [&](int64_t b, int64_t n, float* d) { ck.optimizer->read_range(name, spec.shape, b, n, d); },
          piece);
    }
  }
  e.set_optimizer_step(*ck.optimizer_step());
}

void check_layout(const Layout& l, const nn::ModelConfig& tiny, comm::Mesh& mesh, const std::string& root) {
  {
    MemoryTracker ta, tb, tc;
    Engine a(mesh, tiny, options(l, root + "/offA"), ta, kBatch, kSeq, 1);
    a.initialize(11);
    a.train_step(test::synthetic_batch(0, tiny.vocab_size, kSeq), kLr);
    a.train_step(test::synthetic_batch(1, tiny.vocab_size, kSeq), kLr);
    train::save_checkpoint(a, root + "/ckpt", 2, nlohmann::json::object());
    MPI_Barrier(MPI_COMM_WORLD);
    const auto saved = gather_state(a);

    const ckpt::LoadedCheckpoint ck = ckpt::load_checkpoint(root + "/ckpt");
    ASSERT_TRUE(ck.optimizer.has_value());
    Engine b(mesh, tiny, options(l, root + "/offB"), tb, kBatch, kSeq, 1);
    tb.reset_peaks();
    const std::size_t before = tb.current_total();
    train::load_into_engine(b, ck, /*with_optimizer=*/true);
    // The load holds one piece at most beyond what the engine holds anyway.
    EXPECT_LE(tb.peak_total() - before, static_cast<std::size_t>(kLoadChunk) * sizeof(float));
    EXPECT_EQ(differences(saved, gather_state(b)), std::vector<std::string>{}) << "loaded through load_into_engine";

    // Bytes read: this rank's, the world's, the files' data.
    const uint64_t model_mine = ck.model.bytes_read(), opt_mine = ck.optimizer->bytes_read();
    const uint64_t model_all = sum_over_ranks(model_mine), opt_all = sum_over_ranks(opt_mine);
    const uint64_t model_data = data_bytes(ck.model.tensors()), opt_data = data_bytes(ck.optimizer->tensors());
    const int world = l.shape.world();
    const bool dp_only = l.shape.size(comm::kDp) == world;
    if (dp_only && l.zero >= 3) {
      EXPECT_EQ(model_all, model_data) << "each weight read by exactly one rank";
    }
    if (dp_only && l.zero >= 1) {
      EXPECT_EQ(opt_all, opt_data) << "each moment read by exactly one rank";
    }
    if (dp_only && l.zero < 3) {
      EXPECT_EQ(model_mine, model_data) << "a replica reads every weight";
    }
    if (world == 1) {
      EXPECT_EQ(opt_mine, opt_data);
    }
    if (world > 1 && (!dp_only || l.zero >= 3)) {
      EXPECT_LT(model_mine, model_data) << "a sharded rank read everything";
    }
    if (world > 1) {
      EXPECT_LT(opt_mine, opt_data) << "a sharded rank read every moment";
    }

    // Again with small odd pieces, straight through the engine's entry points.
    Engine c(mesh, tiny, options(l, root + "/offC"), tc, kBatch, kSeq, 1);
    load_with_pieces(c, ck, 777);
    EXPECT_EQ(differences(saved, gather_state(c)), std::vector<std::string>{}) << "loaded in 777-element pieces";
    EXPECT_EQ(sum_over_ranks(ck.model.bytes_read()), 2 * model_all) << "the second load read the same bytes";

    // And they train on alike: the next step's loss, bitwise.
    const auto next = test::synthetic_batch(2, tiny.vocab_size, kSeq);
    const float la = a.train_step(next, kLr).loss, lb = b.train_step(next, kLr).loss, lc = c.train_step(next, kLr).loss;
    EXPECT_EQ(la, lb);
    EXPECT_EQ(la, lc);
  }
}


TEST(CheckpointSliceLoad, EachRankReadsItsSlicesAndTheStateIsBitwiseTheSaved) {
  const nn::ModelConfig tiny = nn::model_preset("tiny");
  for (const Layout& l : layouts()) {
    SCOPED_TRACE(l.name);
    comm::Mesh mesh(comm::make_mpi_communicator(MPI_COMM_WORLD, "world", test::aborting_after(120.0)), l.shape);
    const std::string root = shared_temp_dir();
    if (rank0()) {
      for (const char* d : {"offA", "offB", "offC"}) std::filesystem::create_directories(root + "/" + d);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    check_layout(l, tiny, mesh, root);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank0()) std::filesystem::remove_all(root);
    MPI_Barrier(MPI_COMM_WORLD);
  }
}

}  // namespace
}  // namespace trident::parallel

int main(int argc, char** argv) { return trident::test::run_tests_on_every_rank(argc, argv); }
