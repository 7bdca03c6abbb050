// `trident train`: parses the run configuration, starts MPI and the mesh, runs the loop.
#include <fmt/format.h>

#include "cli/commands.h"
#include "comm/mesh.h"
#include "comm/node_order.h"
#include "comm/runtime.h"
#include "core/check.h"
#include "train/resume_config.h"
#include "train/run_config.h"
#include "train/trainer.h"

namespace trident::cli {

int run_train(int argc, char** argv) {
  if (train::run_config_wants_help(argc, argv)) {
    fmt::print("{}", train::run_config_help());
    return 0;
  }
  train::FieldNames given;
  train::RunConfig cfg = train::parse_run_config(argc, argv, &given);
  comm::MpiRuntime mpi(nullptr, nullptr);
  if (!cfg.train.resume.empty()) {
    // Every rank reads the same trident.json, so the layout below comes from it too.
    train::ResumedConfig resumed = train::resume_run_config(cfg, given, mpi.world_size());
    if (mpi.world_rank() == 0) {
      for (const std::string& note : resumed.notes) fmt::print(stderr, "{}\n", note);
    }
    cfg = std::move(resumed.config);
  }
  const comm::MeshShape shape(cfg.parallel.pp, cfg.parallel.dp, cfg.parallel.tp, cfg.parallel.ep);
  comm::validate_mesh(shape, mpi.world_size());
  // Ranks regrouped by node first, so that every tp group shares a node for any placement.
  std::unique_ptr<comm::Communicator> launcher = mpi.world();
  comm::NodeMajorWorld placed(*launcher);
  launcher.reset();
  comm::Mesh mesh(placed.take_world(), shape);
  if (mesh.rank() == 0) fmt::print(stderr, "{}", placed.describe(shape.size(comm::kTp)));
  return train::run_training(cfg, mesh);
}

}  // namespace trident::cli
