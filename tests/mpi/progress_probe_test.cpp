// comm/progress_probe.h under both shared-memory transports scripts/trident-mpirun can pick:
// the default run uses single-copy (CMA) where the machine allows it, the env-variant run
// forces copy-in/copy-out, where a large message cannot move while its sender sleeps.
// Also: the pipeline executor starts its progress thread as ExecutorOptions says.
// ranks: 2 3
// env-variant: OMPI_MCA_btl_vader_single_copy_mechanism=none
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "comm/communicator.h"
#include "comm/mpi_backend.h"
#include "comm/progress_probe.h"
#include "core/memory.h"
#include "nn/model.h"
#include "parallel/pipeline/executor.h"
#include "parallel/pipeline/partition.h"
#include "mpi_gtest_main.h"

namespace trident {
namespace {

// What the launcher chose; an unset variable means OpenMPI's default (CMA where it works,
// which trident-mpirun only leaves in place after checking that it does).
bool copy_in_copy_out() {
  const char* mechanism = std::getenv("OMPI_MCA_btl_vader_single_copy_mechanism");
  return mechanism != nullptr && std::string(mechanism) == "none";
}

bool any_rank(comm::Communicator& world, bool mine) {
  int32_t flag = mine ? 1 : 0;
  world.allreduce(std::span<int32_t>(&flag, 1), comm::ReduceOp::kMax).wait();
  return flag != 0;
}

TEST(SendProgressProbe, MatchesTheTransport) {
  const auto world_owner = comm::make_mpi_communicator(MPI_COMM_WORLD, "world");
  comm::Communicator& world = *world_owner;
  if (copy_in_copy_out()) {
    // The receiver cannot finish while the sender sleeps outside MPI: always "needed".
    EXPECT_TRUE(comm::sends_need_sender_progress(world));
    return;
  }
  // Single copy: the receiver reads the data itself. A receiver descheduled for half the
  // hold time on a busy machine reads as "needed" (the safe side), so allow three tries;
  // a transport that really needs the sender can never pass.
  bool needed = true;
  for (int attempt = 0; attempt < 3 && needed; ++attempt) {
    needed = any_rank(world, comm::sends_need_sender_progress(world));
  }
  EXPECT_FALSE(needed) << "single-copy shared memory, yet a send did not arrive while its "
                          "sender slept in three tries";
}

TEST(SendProgressProbe, ExecutorStartsThePollingThreadAsAsked) {
  const auto world_owner = comm::make_mpi_communicator(MPI_COMM_WORLD, "pp");
  comm::Communicator& world = *world_owner;
  const int P = world.size();
  nn::ModelConfig cfg;
  // Activations of 4 x 64 x 64 floats = 64 KiB: above what OpenMPI's shared memory sends
  // eagerly in the first fragment (32 KiB), so copy-in/copy-out needs the sender. (The probe
  // uses the real message size: a pipeline of small messages needs no polling thread.)
  cfg.n_layer = 2 * P, cfg.n_head = 2, cfg.n_embd = 64, cfg.n_positions = 64, cfg.vocab_size = 64;
  const pp::Partition part = pp::partition_layers(cfg.n_layer, {P, 1});
  MemoryTracker tracker;
  nn::Model model(cfg, {}, part.chunk(world.rank(), 0));
  model.allocate(tracker);
  const pp::ScheduleSpec spec{pp::ScheduleKind::kOneFOneB, P, 2, 1};
  for (const pp::SendProgress mode : {pp::SendProgress::kThread, pp::SendProgress::kNone}) {
    pp::ExecutorOptions eo;
    eo.micro_batch_rows = 4, eo.seq_len = 64, eo.send_progress = mode;
    pp::PipelineExecutor exec(world, {&model}, spec, tracker, eo);
    EXPECT_EQ(exec.has_progress_thread(), mode == pp::SendProgress::kThread);
  }
  if (copy_in_copy_out()) {
    pp::ExecutorOptions eo;
    eo.micro_batch_rows = 4, eo.seq_len = 64;
    pp::PipelineExecutor exec(world, {&model}, spec, tracker, eo);
    EXPECT_TRUE(exec.has_progress_thread()) << "auto must poll where sends need their sender";
  }
}

}  // namespace
}  // namespace trident

int main(int argc, char** argv) { return trident::test::run_tests_on_every_rank(argc, argv); }
