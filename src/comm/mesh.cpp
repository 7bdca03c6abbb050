// Mesh: rank <-> (pp, dp, tp) arithmetic and group creation with Communicator::split.
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

Mesh::Mesh(std::unique_ptr<Communicator> world, MeshShape shape)
    : shape_(shape), world_(std::move(world)) {
  TRI_CHECK(world_ != nullptr, "Mesh: null world communicator");
  validate_mesh(shape_, world_->size());
  coord_ = mesh_coord(world_->rank(), shape_);
  const MeshShape& s = shape_;
  const MeshCoord& c = coord_;
  Communicator& w = *world_;
  tp_ = w.split(c.pp * s.dp + c.dp, c.tp, "tp");
  dp_ = w.split(c.pp * s.tp + c.tp, c.dp, "dp");
  pp_ = w.split(c.dp * s.tp + c.tp, c.pp, "pp");
  // color: (pp, tp, the other ep-axis coordinate), key: the group's own coordinate
  const int ep = c.dp % s.ep, edp = c.dp / s.ep, n_edp = s.dp / s.ep;
  ep_ = w.split((c.pp * s.tp + c.tp) * n_edp + edp, ep, "ep");
  edp_ = w.split((c.pp * s.tp + c.tp) * s.ep + ep, edp, "edp");
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
