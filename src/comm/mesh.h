// Mesh: the world of ranks laid out as (pp, dp, tp) with tp fastest-varying, and the process
// groups along each axis, created once. Which module uses which group is left to the caller.
//
//   global rank r -> tp = r % T, dp = (r / T) % D, pp = r / (T * D)
//
// tp groups are neighbouring ranks (same node on a cluster); pp crosses the slowest links.
// Inside each group a rank's group rank equals its coordinate on that axis.
//
// Expert parallelism (ep, dividing dp) is carved out of dp: consecutive dp ranks form an ep group
// (ep coordinate = dp % ep; they hold different experts and exchange tokens), and the ranks
// holding the same experts (same dp % ep) form the expert-data-parallel group edp (group rank
// dp / ep) over which expert gradients are reduced. ep 1: ep groups of one, edp = dp.
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.h"

namespace trident::comm {

struct MeshShape {
  int pp = 1;
  int dp = 1;
  int tp = 1;
  int ep = 1;  // expert-parallel ranks, out of dp
  int world() const { return pp * dp * tp; }
};

struct MeshCoord {
  int pp = 0;
  int dp = 0;
  int tp = 0;
  bool operator==(const MeshCoord&) const = default;
};

// Throws "dp(2) * tp(2) * pp(4) = 16 != world size 8 ..." style errors.
void validate_mesh(const MeshShape& shape, int world_size);
MeshCoord mesh_coord(int rank, const MeshShape& shape);
int mesh_rank(const MeshCoord& coord, const MeshShape& shape);

class Mesh {
 public:
  // Collective over `world` (any backend: make_mpi_communicator in comm/mpi_backend.h, or an
  // in-process world): validates the shape and splits the tp, dp, pp, ep and edp groups from
  // it, each with world's options.
  Mesh(std::unique_ptr<Communicator> world, MeshShape shape);

  const MeshShape& shape() const { return shape_; }
  const MeshCoord& coord() const { return coord_; }
  int rank() const { return world_->rank(); }
  int size() const { return world_->size(); }
  // Global rank of another coordinate.
  int rank_of(const MeshCoord& c) const { return mesh_rank(c, shape_); }

  Communicator& world() { return *world_; }
  Communicator& tp() { return *tp_; }  // same pp, dp; group rank = tp coordinate
  Communicator& dp() { return *dp_; }  // same pp, tp; group rank = dp coordinate
  Communicator& pp() { return *pp_; }  // same dp, tp; group rank = pp coordinate
  // same pp, tp, dp / ep; group rank = dp % ep (the ep coordinate)
  Communicator& ep() { return *ep_; }
  // same pp, tp, dp % ep; group rank = dp / ep (expert data parallelism)
  Communicator& edp() { return *edp_; }
  int ep_coord() const { return coord_.dp % shape_.ep; }
  int edp_coord() const { return coord_.dp / shape_.ep; }
  // Applies to all groups.
  void set_timeout(double seconds);
  void set_debug(bool on);
  void set_timeout_action(TimeoutAction action);

 private:
  MeshShape shape_;
  MeshCoord coord_;
  std::unique_ptr<Communicator> world_, tp_, dp_, pp_, ep_, edp_;
};

}  // namespace trident::comm
