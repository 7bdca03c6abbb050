// Sequence parallelism under --precision bf16/fp16 gathers the norm outputs that feed a
// column-parallel matmul as their 16-bit words (nn/transformer_block.cpp region_input, the
// head's ln_f in nn/model.cpp head_input): the engine rounds every operand of a product to those
// 16 bits anyway, so the gathered words are exactly what it would have made of the gathered
// fp32 rows. Checked against the same model saving the operands in fp32
// (Model::set_store_16bit_operands(false)), whose gathers move fp32:
//   * bitwise: losses and every gradient over two micro-batches are identical;
//   * bytes: the tp group's Communicator::bytes_sent falls by exactly half of those gathers'
//     fp32 bytes, 2 bytes per element: per layer norm1 and norm2 are gathered in forward and
//     again in backward (4 gathers), the head's ln_f once (backward reuses it), each sending
//     this rank's Nl rows of C to the other P - 1 ranks:
//       fp32 - 16-bit = (4 L + 1) * Nl * C * (P - 1) * (4 - 2) bytes
//     (a MoE layer: 2 gathers, its norm2 output is fp32).
// Mutation tried by hand: gathering the 16-bit words with half the counts (the fp32 element
// count / 2) fails the bitwise check.
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
#include "parallel/tensor_parallel_comm.h"
#include "mpi_gtest_main.h"

namespace trident {
namespace {

comm::Mesh* g_mesh = nullptr;
std::unique_ptr<parallel::CommTensorParallel> g_tp;

constexpr int64_t kB = 2, kT = 7;

nn::ModelConfig config(nn::Family family) {
  nn::ModelConfig c;
  c.n_layer = 2, c.n_head = 4, c.n_embd = 32, c.n_positions = 16, c.vocab_size = 1003;
  c.vocab_pad_multiple = 8;
  if (family == nn::Family::kLlama) c.family = family, c.n_head = 8, c.n_kv_head = 2, c.n_inner = 72;
  return c;
}

struct Result {
  std::vector<float> grads;
  std::vector<double> losses;
  uint64_t bytes = 0;  // sent by this rank on the tp group during the steps
};

Result run(const nn::ModelConfig& cfg, kernels::Precision p, bool store16) {
  MemoryTracker tracker;
  nn::Model model(cfg, parallel::make_tp_context(*g_tp, true));
  model.set_precision(p);
  model.set_store_16bit_operands(store16);
  model.allocate(tracker);
  model.params().initialize(7);
  model.params().zero_grads();
  const int64_t N = kB * kT;
  std::vector<int32_t> ids(static_cast<std::size_t>(N)), targets(ids.size());
  for (int64_t i = 0; i < N; ++i) {
    ids[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 577 + 3) % cfg.vocab_size);
    targets[static_cast<std::size_t>(i)] = static_cast<int32_t>((i * 211 + 990) % cfg.vocab_size);
  }
  nn::ModelActivations acts = model.make_activations(tracker, kB, kT);
  Result r;
  const uint64_t before = g_mesh->tp().bytes_sent();
  for (int mb = 0; mb < 2; ++mb) {
    r.losses.push_back(model.forward_backward(acts, ids.data(), targets.data(), kB, kT, 1.0f / N));
    std::rotate(ids.begin(), ids.begin() + 5, ids.end());
  }
  r.bytes = g_mesh->tp().bytes_sent() - before;
  const nn::ParameterSet& ps = model.params();
  r.grads.assign(ps.grads().data(), ps.grads().data() + ps.total_numel());
  return r;
}

void check(const nn::ModelConfig& cfg, kernels::Precision p) {
  const Result fp32_moved = run(cfg, p, false), moved16 = run(cfg, p, true);
  ASSERT_EQ(moved16.grads.size(), fp32_moved.grads.size());
  EXPECT_EQ(std::memcmp(moved16.grads.data(), fp32_moved.grads.data(), moved16.grads.size() * sizeof(float)), 0)
      << "gradients differ between the 16-bit and the fp32 gathers";
  EXPECT_EQ(moved16.losses, fp32_moved.losses);
  const int P = g_tp->size();
  const int64_t Nl = parallel::make_tp_context(*g_tp, true).rows(kB * kT).count;
  uint64_t gathers = 1;  // ln_f
  for (int l = 0; l < cfg.n_layer; ++l) gathers += cfg.layer_is_moe(l) ? 2 : 4;  // a MoE norm2 is fp32
  gathers *= 2;  // two micro-batches
  EXPECT_EQ(fp32_moved.bytes - moved16.bytes, gathers * static_cast<uint64_t>(Nl * cfg.n_embd * (P - 1) * 2));
}

TEST(SequenceParallel16, GptBf16GatherIsBitwiseAndHalfTheBytes) { check(config(nn::Family::kGpt2), kernels::Precision::kBf16); }
TEST(SequenceParallel16, GptFp16GatherIsBitwiseAndHalfTheBytes) { check(config(nn::Family::kGpt2), kernels::Precision::kFp16); }
TEST(SequenceParallel16, LlamaBf16GatherIsBitwiseAndHalfTheBytes) { check(config(nn::Family::kLlama), kernels::Precision::kBf16); }
// Mixtral: its MoE layers' norm2 output stays fp32 (the router reads it as values) and is
// gathered as fp32; norm1 and ln_f as 16-bit words.
TEST(SequenceParallel16, MixtralBf16GatherIsBitwiseAndHalfTheBytes) {
  check(nn::model_preset("mixtral-tiny"), kernels::Precision::kBf16);
}

// fp32: nothing is 16-bit, the switch changes no byte.
TEST(SequenceParallel16, Fp32MovesTheSameBytes) {
  const nn::ModelConfig cfg = config(nn::Family::kGpt2);
  EXPECT_EQ(run(cfg, kernels::Precision::kFp32, true).bytes, run(cfg, kernels::Precision::kFp32, false).bytes);
}

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
        trident::g_mesh = mesh.get();
        trident::g_tp = std::make_unique<trident::parallel::CommTensorParallel>(mesh->tp());
      },
      [&] {
        trident::g_tp.reset();
        mesh.reset();
      });
}
