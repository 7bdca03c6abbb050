// NodeMajorWorld: the launcher's world with its ranks regrouped node by node, so that the mesh's
// consecutive ranks (a tensor-parallel group, tp fastest) share a node whatever order the
// launcher placed them in (mpirun --map-by node, a round-robin hostfile, srun --distribution
// cyclic). Nodes are what the transport calls one (Communicator::split_node; under MPI
// MPI_COMM_TYPE_SHARED: the ranks that can share memory; in-process: one node), taken in the
// order of their lowest launcher rank; inside a node the launcher's order is kept. With the usual block placement (--map-by slot, ppr:K:node, srun's default)
// nothing moves, and launcher rank 0 is always mesh rank 0.
//
// A tp group can still span nodes when a node holds a number of ranks that is not a multiple of
// tp; the run stays correct (only slower), so that is a warning, not an error.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace trident::comm {

// Pure parts, unit-tested. leader[r] = the lowest launcher rank on launcher rank r's node.
// Returns order[m] = the launcher rank that becomes mesh rank m.
std::vector<int> node_major_order(const std::vector<int>& leader);
// Given each mesh rank's node index and the nodes' names: "" on one node; otherwise one line
// "nodes: N (node0: ranks 0-3; node1: ranks 4-7)" (plus each node's launcher ranks when they
// were regrouped) and a warning line for every tp group that spans nodes.
std::string describe_placement(const std::vector<int>& node_of, const std::vector<std::string>& names,
                               const std::vector<int>& order, int tp);

class NodeMajorWorld {
 public:
  // Collective over `launcher` (any backend: MpiRuntime::world(), an in-process world): builds
  // the regrouped world, a Communicator named `name` with `options`.
  explicit NodeMajorWorld(Communicator& launcher, std::string name = "world",
                          CommOptions options = CommOptions::from_env());
  ~NodeMajorWorld();
  NodeMajorWorld(const NodeMajorWorld&) = delete;
  NodeMajorWorld& operator=(const NodeMajorWorld&) = delete;

  // The regrouped world (mesh rank = group rank), handed over once (e.g. to a Mesh).
  std::unique_ptr<Communicator> take_world();
  int nodes() const { return nodes_; }
  // Mesh rank -> node index (0 .. nodes() - 1).
  const std::vector<int>& node_of() const { return node_of_; }
  std::string describe(int tp) const { return describe_placement(node_of_, names_, order_, tp); }

 private:
  std::unique_ptr<Communicator> world_;
  int nodes_ = 1;
  std::vector<int> order_;               // mesh rank -> launcher rank
  std::vector<int> node_of_;             // mesh rank -> node index
  std::vector<std::string> names_;       // node index -> processor name of its first rank
};

}  // namespace trident::comm
