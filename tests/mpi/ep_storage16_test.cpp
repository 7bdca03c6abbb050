// Expert parallelism under --precision bf16/fp16 with the experts' matmul-only operands saved
// in 16 bits (nn/moe_mlp.h: act on the owner, which grows it to the rows it receives, and the
// expert inputs, which the source rounds into xs and sends as those 16-bit words, kept by the
// owner as its xo): losses and gradients over two micro-batches are bitwise those of the same
// model saving them in fp32 (Model::set_store_16bit_operands(false)), whose exchange moves
// fp32 rows, on every ep rank. mixtral-tiny at ep = world size.
// And the bytes: the ep group's Communicator::bytes_sent falls by exactly 2 bytes an element
// of the forward input exchanges (half their fp32 bytes; outputs and gradients stay fp32): per
// MoE layer and micro-batch, the rows this rank routed to experts on the other ranks, C wide.
// Mutations tried by hand: sending the 16-bit words with the counts halved (as if they were
// 4-byte elements) fails the bitwise check; sending fp32 rows and rounding them on the owner
// (bitwise, but no bytes saved) fails the bytes check.
// ranks: 2
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "comm/mesh.h"
#include "comm/mpi_backend.h"
#include "comm/runtime.h"
#include "kernels/kernels.h"
#include "nn/model.h"
#include "parallel/expert_parallel_comm.h"
#include "mpi_gtest_main.h"

namespace trident {
namespace {

comm::Communicator* g_group = nullptr;  // the ep group
std::unique_ptr<parallel::CommExpertParallel> g_ep;

struct Result {
  std::vector<float> grads;
  std::vector<double> losses;
  uint64_t bytes = 0;          // sent by this rank on the ep group during the micro-batches
  int64_t remote_rows = 0;     // routed rows this rank sent to experts held by other ranks
};

Result run(kernels::Precision p, bool store16) {
  const nn::ModelConfig cfg = nn::model_preset("mixtral-tiny");
  nn::TpContext ctx;
  ctx.ep = parallel::make_ep_context(*g_ep);
  MemoryTracker tracker;
  nn::Model model(cfg, ctx);
  model.set_precision(p);
  model.set_store_16bit_operands(store16);
  model.allocate(tracker);
  model.params().initialize(7);
  model.params().zero_grads();
  const int64_t B = 2, T = 16, N = B * T;
  std::vector<int32_t> ids(static_cast<std::size_t>(N)), targets(ids.size());
  for (int64_t i = 0; i < N; ++i) {  // different tokens on each rank: uneven loads per owner
    ids[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 577 + 3 + 101 * g_ep->rank()) % cfg.vocab_size);
    targets[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 211 + 990) % cfg.vocab_size);
  }
  nn::ModelActivations acts = model.make_activations(tracker, B, T);
  Result r;
  const uint64_t before = g_group->bytes_sent();
  for (int mb = 0; mb < 2; ++mb) {
    r.losses.push_back(model.forward_backward(acts, ids.data(), targets.data(), B, T, 1.0f / N));
    std::rotate(ids.begin(), ids.begin() + 5, ids.end());
  }
  r.bytes = g_group->bytes_sent() - before;
  // Tokens per (layer, expert) of this rank, both micro-batches (dropless: each one a routed row).
  std::vector<int64_t> load(static_cast<std::size_t>(cfg.n_layer * cfg.n_experts), 0);
  model.take_expert_load(load);
  const int local = cfg.n_experts / g_ep->size();
  for (std::size_t i = 0; i < load.size(); ++i) {
    if (static_cast<int>(i % static_cast<std::size_t>(cfg.n_experts)) / local != g_ep->rank()) r.remote_rows += load[i];
  }
  const nn::ParameterSet& ps = model.params();
  r.grads.assign(ps.grads().data(), ps.grads().data() + ps.total_numel());
  return r;
}

void check(kernels::Precision p) {
  const Result fp32_saved = run(p, false), saved16 = run(p, true);
  ASSERT_EQ(saved16.grads.size(), fp32_saved.grads.size());
  EXPECT_EQ(std::memcmp(saved16.grads.data(), fp32_saved.grads.data(), saved16.grads.size() * sizeof(float)), 0)
      << "gradients differ on ep rank " << g_ep->rank();
  EXPECT_EQ(saved16.losses, fp32_saved.losses);
  const nn::ModelConfig cfg = nn::model_preset("mixtral-tiny");
  ASSERT_EQ(cfg.expert_capacity_factor, 0.0);  // dropless: every routed pair is a row
  ASSERT_EQ(saved16.remote_rows, fp32_saved.remote_rows);
  ASSERT_GT(saved16.remote_rows, 0);
  EXPECT_EQ(fp32_saved.bytes - saved16.bytes, static_cast<uint64_t>(saved16.remote_rows * cfg.n_embd * 2))
      << "on ep rank " << g_ep->rank();
}

// fp32: nothing is 16-bit, the switch changes no byte.
TEST(ExpertParallel16, Fp32MovesTheSameBytes) {
  EXPECT_EQ(run(kernels::Precision::kFp32, true).bytes, run(kernels::Precision::kFp32, false).bytes);
}

TEST(ExpertParallel16, Bf16IsBitwiseAsFp32Storage) { check(kernels::Precision::kBf16); }
TEST(ExpertParallel16, Fp16IsBitwiseAsFp32Storage) { check(kernels::Precision::kFp16); }

}  // namespace
}  // namespace trident

int main(int argc, char** argv) {
  std::unique_ptr<trident::comm::Mesh> mesh;
  return trident::test::run_tests_on_every_rank(
      argc, argv,
      [&] {
        trident::kernels::set_num_threads(1);
        int world = 1;
        MPI_Comm_size(MPI_COMM_WORLD, &world);
        mesh = std::make_unique<trident::comm::Mesh>(
            trident::comm::make_mpi_communicator(MPI_COMM_WORLD, "world", trident::test::aborting_after(30.0)),
            trident::comm::MeshShape{1, 1, world});
        trident::g_group = &mesh->tp();  // the world as the ep group
        trident::g_ep = std::make_unique<trident::parallel::CommExpertParallel>(mesh->tp());
      },
      [&] {
        trident::g_ep.reset();
        mesh.reset();
      });
}
