// Mesh: the world of ranks laid out as a list of named dimensions, slowest first, and the
// process groups over them, created once. Which module uses which group is left to the caller.
//
// Trident's mesh (MeshShape(pp, dp, tp, ep)) declares the order
//
//   pp, edp, ep, tp            (tp fastest: neighbouring ranks, one node on a cluster;
//                               pp crosses the slowest links)
//
// with edp = dp / ep, so for ep 1 it is today's (pp, dp, tp):
//   global rank r -> tp = r % T, dp = (r / T) % D, pp = r / (T * D).
// Data parallelism is the group over (edp, ep) (dp coordinate = edp * ep + ep coordinate), so
// expert parallelism is carved out of dp: consecutive dp ranks form an ep group (they hold
// different experts and exchange tokens), and the ranks holding the same experts (same dp % ep)
// form the expert-data-parallel group edp, over which expert gradients are reduced.
//
// Every dimension is a group of its own name; a group may span several dimensions (dp). A
// group's members are the ranks sharing every other dimension's coordinate, and a rank's group
// rank is its coordinate on the group, read with the group's dimensions in declared order (the
// first slowest). A further dimension (context parallelism, say) is one more name in the list:
// the arithmetic, the splits and the checks below are written once for any list.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "comm/communicator.h"

namespace trident::comm {

// Trident's dimension and group names.
inline constexpr std::string_view kPp = "pp", kDp = "dp", kEdp = "edp", kEp = "ep", kTp = "tp";

struct MeshDim {
  std::string name;
  int size = 1;
};
// A group spanning `dims` (each a dimension's name, in declared order).
struct MeshGroup {
  std::string name;
  std::vector<std::string> dims;
};

class MeshShape {
 public:
  // Trident's mesh: pp, edp = dp / ep, ep, tp, and the group dp over (edp, ep). Throws
  // trident::Error naming the fix when a size is < 1 or ep does not divide dp.
  MeshShape(int pp = 1, int dp = 1, int tp = 1, int ep = 1);
  // Any list of dimensions, slowest first (distinct names, sizes >= 1), with every dimension
  // a group of its own and `compound` groups over several (each named once, its dimensions
  // given in declared order).
  MeshShape(std::vector<MeshDim> dims, std::vector<MeshGroup> compound);

  const std::vector<MeshDim>& dims() const { return dims_; }
  // Every group: the dimensions' own, in declared order, then the compound ones.
  const std::vector<MeshGroup>& groups() const { return groups_; }
  const MeshGroup& group(std::string_view name) const;
  // Ranks in a group (the product of its dimensions' sizes).
  int size(std::string_view group) const;
  int world() const;
  // The coordinate of every dimension, in declared order; and back.
  std::vector<int> coords(int rank) const;
  int rank_of(const std::vector<int>& coords) const;
  // `rank`'s coordinate on a group (its rank in that group).
  int coord(int rank, std::string_view group) const;
  // The global ranks of `rank`'s group, by group rank.
  std::vector<int> members(int rank, std::string_view group) const;
  // The split of the world that makes `rank`'s group: colour = its coordinate over the other
  // dimensions (declared order), key = its coordinate on the group.
  int split_color(int rank, std::string_view group) const;
  // "pp(2) * edp(1) * ep(2) * tp(2) (dp = edp * ep = 2)": the dimensions, then the compound groups.
  std::string describe() const;

 private:
  int dim_index(std::string_view name) const;
  // Linear coordinate of `coords` over dims with `in_group[i] == want`, declared order.
  int linear(const std::vector<int>& coords, const std::vector<bool>& in_group, bool want) const;
  std::vector<bool> mask(const MeshGroup& g) const;

  std::vector<MeshDim> dims_;
  std::vector<MeshGroup> groups_;
};

// Throws "mesh pp(4) * edp(2) * ep(1) * tp(2) (dp = edp * ep = 2) has 16 ranks != world size 8 ..."
void validate_mesh(const MeshShape& shape, int world_size);

class Mesh {
 public:
  // Collective over `world` (any backend: make_mpi_communicator in comm/mpi_backend.h, or an
  // in-process world): validates the shape and splits every group of it from the world, in
  // shape.groups() order, each with world's options.
  Mesh(std::unique_ptr<Communicator> world, MeshShape shape);

  const MeshShape& shape() const { return shape_; }
  int rank() const { return world_->rank(); }
  int size() const { return world_->size(); }
  // This rank's coordinate on a group (= its rank there).
  int coord(std::string_view group) const { return shape_.coord(rank(), group); }

  Communicator& world() { return *world_; }
  Communicator& group(std::string_view name);
  // Trident's groups by name (MeshShape(pp, dp, tp, ep)).
  Communicator& tp() { return group(kTp); }    // same pp, dp
  Communicator& dp() { return group(kDp); }    // same pp, tp
  Communicator& pp() { return group(kPp); }    // same dp, tp
  Communicator& ep() { return group(kEp); }    // same pp, tp, dp / ep: the token exchange
  Communicator& edp() { return group(kEdp); }  // same pp, tp, dp % ep: expert gradients
  // Apply to the world and every group.
  void set_timeout(double seconds);
  void set_debug(bool on);
  void set_timeout_action(TimeoutAction action);

 private:
  MeshShape shape_;
  std::unique_ptr<Communicator> world_;
  std::vector<std::unique_ptr<Communicator>> groups_;  // by shape_.groups()
};

}  // namespace trident::comm
