// Mesh: rank <-> (pp, dp, tp) arithmetic and group creation with MPI_Comm_split.
#include "comm/mesh.h"

#include "core/check.h"

namespace trident::comm {

void validate_mesh(const MeshShape& s, int world_size) {
  TRI_CHECK(s.pp >= 1 && s.dp >= 1 && s.tp >= 1,
            "parallel sizes must be >= 1, got dp({}) tp({}) pp({})", s.dp, s.tp, s.pp);
  TRI_CHECK(s.world() == world_size,
            "dp({}) * tp({}) * pp({}) = {} != world size {}: launch {} ranks or choose sizes "
            "whose product is {}",
            s.dp, s.tp, s.pp, s.world(), world_size, s.world(), world_size);
  TRI_CHECK(s.ep >= 1 && s.dp % s.ep == 0,
            "ep {} does not divide dp {}: expert parallelism splits each group of ep data-parallel "
            "ranks' experts between them; choose an ep that divides dp",
            s.ep, s.dp);
}

MeshCoord mesh_coord(int rank, const MeshShape& s) {
  return MeshCoord{rank / (s.tp * s.dp), (rank / s.tp) % s.dp, rank % s.tp};
}

int mesh_rank(const MeshCoord& c, const MeshShape& s) {
  return (c.pp * s.dp + c.dp) * s.tp + c.tp;
}

namespace {

std::unique_ptr<Communicator> split(MPI_Comm world, int color, int key, const std::string& name,
                                    const CommOptions& options) {
  MPI_Comm sub = MPI_COMM_NULL;
  int rc = MPI_Comm_split(world, color, key, &sub);
  TRI_CHECK(rc == MPI_SUCCESS, "MPI_Comm_split for group {} failed (code {})", name, rc);
  auto comm = std::make_unique<Communicator>(sub, name, options);
  MPI_Comm_free(&sub);  // the Communicator holds its own duplicate
  return comm;
}

}  // namespace

Mesh::Mesh(MPI_Comm world, MeshShape shape, CommOptions options) : shape_(shape) {
  int world_size = 0, rank = 0;
  MPI_Comm_size(world, &world_size);
  MPI_Comm_rank(world, &rank);
  validate_mesh(shape_, world_size);
  coord_ = mesh_coord(rank, shape_);
  const MeshShape& s = shape_;
  const MeshCoord& c = coord_;
  world_ = std::make_unique<Communicator>(world, "world", options);
  tp_ = split(world, c.pp * s.dp + c.dp, c.tp, "tp", options);
  dp_ = split(world, c.pp * s.tp + c.tp, c.dp, "dp", options);
  pp_ = split(world, c.dp * s.tp + c.tp, c.pp, "pp", options);
  // color: (pp, tp, the other ep-axis coordinate), key: the group's own coordinate
  const int ep = c.dp % s.ep, edp = c.dp / s.ep, n_edp = s.dp / s.ep;
  ep_ = split(world, (c.pp * s.tp + c.tp) * n_edp + edp, ep, "ep", options);
  edp_ = split(world, (c.pp * s.tp + c.tp) * s.ep + ep, edp, "edp", options);
}

void Mesh::set_timeout(double seconds) {
  for (auto* g : {world_.get(), tp_.get(), dp_.get(), pp_.get(), ep_.get(), edp_.get()}) g->set_timeout(seconds);
}
void Mesh::set_debug(bool on) {
  for (auto* g : {world_.get(), tp_.get(), dp_.get(), pp_.get(), ep_.get(), edp_.get()}) g->set_debug(on);
}
void Mesh::set_timeout_action(TimeoutAction action) {
  for (auto* g : {world_.get(), tp_.get(), dp_.get(), pp_.get(), ep_.get(), edp_.get()}) g->set_timeout_action(action);
}

}  // namespace trident::comm
