// Mesh: the world of ranks laid out as (pp, dp, tp) with tp fastest-varying, and the process
// groups along each axis, created once. Which module uses which group is left to the caller.
//
//   global rank r -> tp = r % T, dp = (r / T) % D, pp = r / (T * D)
//
// tp groups are neighbouring ranks (same node on a cluster); pp crosses the slowest links.
// Inside each group a rank's group rank equals its coordinate on that axis.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>

#include "comm/communicator.h"

namespace trident::comm {

struct MeshShape {
  int pp = 1;
  int dp = 1;
  int tp = 1;
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
  // Collective over `world`: validates the shape and splits the tp, dp and pp groups.
  Mesh(MPI_Comm world, MeshShape shape, CommOptions options = CommOptions::from_env());

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
  // Applies to all four groups.
  void set_timeout(double seconds);
  void set_debug(bool on);
  void set_timeout_action(TimeoutAction action);

 private:
  MeshShape shape_;
  MeshCoord coord_;
  std::unique_ptr<Communicator> world_, tp_, dp_, pp_;
};

}  // namespace trident::comm
