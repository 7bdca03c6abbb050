// Forward-only evaluation (see eval_step.h).
#include "parallel/eval_step.h"

#include <optional>

namespace trident::parallel {

namespace {
// Message tag of the evaluation pipeline: below the executor's range (which starts at 16);
// evaluation never overlaps a training step, and MPI keeps one pair's messages in order.
constexpr int kEvalTag = 1;

double pipeline_micro_batch(RankLayout& L, const int32_t* ids, const int32_t* targets) {
  // Through the global chunks in order: chunk s lives on pp rank s % pp as local chunk s / pp.
  comm::Mesh& mesh = L.mesh();
  const int P = mesh.shape().size(comm::kPp), me = mesh.coord(comm::kPp);
  const int S = P * static_cast<int>(L.chunks().size());
  const int64_t B = L.batch().micro_rows, T = L.batch().seq_len;
  double loss = 0.0;
  for (int s = 0; s < S; ++s) {
    if (s % P != me) continue;
    const auto k = static_cast<std::size_t>(s / P);
    nn::Model& model = *L.chunks()[k].model;
    nn::ModelActivations& acts = L.buffers().eval_acts[k];
    const auto n = static_cast<std::size_t>(model.local_rows(B * T) * L.config().n_embd);
    if (s == 0) {
      model.embed_forward(acts, ids, B, T);
    } else {
      mesh.pp().recv(std::span<float>(acts.stage_input(), n), (s - 1) % P, kEvalTag).wait();
    }
    model.blocks_forward(acts, B, T);
    if (s + 1 < S) {
      mesh.pp().send(std::span<const float>(acts.stage_output(), n), (s + 1) % P, kEvalTag).wait();
    } else {
      loss = model.head_loss(acts, targets, B, T);
    }
  }
  return loss;
}
}  // namespace

double eval_loss(RankLayout& L, const BatchFn& batch) {
  const BatchSplit& b = L.batch();
  StepBuffers& buf = L.buffers();
  // pp == 1 reads into the step's micro-batch; pp > 1 into its first pipeline micro-batch.
  int32_t* ids = buf.ids.empty() ? buf.mb_ids[0].data() : buf.ids.data();
  int32_t* targets = buf.targets.empty() ? buf.mb_targets[0].data() : buf.targets.data();
  double loss_sum = 0.0;
  std::optional<WeightCopyScope> copies(std::in_place, L);  // bf16: the weights rounded once
  for (int m = 0; m < b.micro_batches; ++m) {
    batch(L.first_row() + m * b.micro_rows, b.micro_rows, ids, targets);
    if (!L.executor()) {
      loss_sum += L.chunks()[0].model->forward_loss(buf.acts, ids, targets, b.micro_rows, b.seq_len);
    } else {
      loss_sum += pipeline_micro_batch(L, ids, targets);
    }
  }
  copies.reset();
  for (ModelChunk& c : L.chunks()) {
    if (c.dp) c.dp->release_all();  // ZeRO-3: drop the groups the forward gathered
  }
  // Each (dp rank, last stage) holds its rows' loss; tp ranks hold identical copies.
  std::vector<double> v{L.holds_loss() ? loss_sum : 0.0};
  L.mesh().world().allreduce(std::span<double>(v), comm::ReduceOp::kSum).wait();
  return v[0] / static_cast<double>(b.tokens());
}

}  // namespace trident::parallel
