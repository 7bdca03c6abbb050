// The planner's LoRA moment count under expert parallelism (plan/memory_model.h) against the
// engine itself: a Mixtral LoRA run (adapters on the attention, frozen experts) at dp 2 with
// ep 1 and ep 2, every ZeRO stage, its two dp ranks as threads (comm/in_process.h). Under ep
// the ZeRO layout cuts the expert runs out as their own segments over edp = dp / ep, which moves
// where the dense shards (and so the adapters) are cut; the prediction must be the most any dp
// rank's AdamW holds, to the byte, as every other memory term of a LoRA run is
// (cli.lora_memory_test). Only the engines are built; nothing is trained.
#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "comm/in_process.h"
#include "comm/mesh.h"
#include "core/memory.h"
#include "nn/model_config.h"
#include "parallel/engine.h"
#include "plan/memory_model.h"

namespace trident::plan {
namespace {

constexpr int64_t kBatch = 4, kSeq = 16;

nn::ModelConfig lora_mixtral() {
  nn::ModelConfig c = nn::model_preset("mixtral-tiny");
  c.lora = nn::LoraConfig{2, 4.0, {"q", "v", "o"}};
  return c;
}

// Each dp rank's tracked AdamW state (bytes) when the engine is built at dp 2, ep `ep`.
std::vector<int64_t> engine_optimizer_bytes(int ep, int zero) {
  std::vector<int64_t> out(2, -1);
  std::mutex m;
  comm::CommOptions o;
  o.timeout_s = 120.0;
  o.on_timeout = comm::TimeoutAction::kThrow;
  comm::run_in_process(2, [&](comm::Communicator& launcher) {
    comm::Mesh mesh(launcher.split(0, launcher.rank(), "world"), comm::MeshShape{1, 2, 1, ep});
    parallel::EngineOptions eo;
    eo.zero = zero;
    MemoryTracker tracker;
    parallel::Engine e(mesh, lora_mixtral(), eo, tracker, kBatch, kSeq, 1);
    std::lock_guard lock(m);
    out[static_cast<std::size_t>(mesh.coord(comm::kDp))] = static_cast<int64_t>(tracker.current(MemCategory::kOptimizerState));
  }, o);
  return out;
}

TEST(PlanLoraEpMemory, MomentsAreTheLargestDpRanksExactlyUnderExpertParallelism) {
  PlanRequest r;
  r.model = lora_mixtral();
  r.world = 2;
  r.batch_size = kBatch;
  r.seq_len = kSeq;
  for (int ep : {1, 2}) {
    for (int zero = 0; zero <= 3; ++zero) {
      const std::vector<int64_t> ranks = engine_optimizer_bytes(ep, zero);
      Layout l;
      l.dp = 2, l.ep = ep, l.zero = zero;
      const double planned = predict_memory(r, l).worst().optimizer;
      EXPECT_GT(ranks[0], 0) << "ep " << ep << " zero " << zero;
      EXPECT_DOUBLE_EQ(planned, static_cast<double>(*std::max_element(ranks.begin(), ranks.end())))
          << "ep " << ep << " zero " << zero << ": dp ranks hold " << ranks[0] << " and " << ranks[1] << " bytes";
    }
  }
}

}  // namespace
}  // namespace trident::plan
