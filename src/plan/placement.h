// Which of a layout's process groups span nodes. The rank -> node map is the one the job runs
// with: comm::NodeMajorWorld regroups the launcher's ranks node by node (mesh rank m on node
// node_of_rank[m]), and comm::MeshShape places mesh rank m at (pp, dp, tp), tp fastest. The
// planner prices a group's collectives on the intra-node link when all its ranks share a node
// and on the inter-node link otherwise (a ring runs at the pace of its slowest hop).
#pragma once

#include <vector>

#include "plan/layout.h"

namespace trident::plan {

struct GroupsCrossNodes {
  bool tp = false, dp = false, pp = false;  // true: some group along that axis spans nodes
  // The most groups along that axis that span nodes and have a rank on one node: how many of
  // those groups' streams share one node's link when they all talk at once (a ring leaves
  // each node once per group).
  int tp_streams = 0, dp_streams = 0, pp_streams = 0;
  // Expert parallelism (layout.ep > 1), carved out of dp as comm::Mesh does: an ep group is ep
  // consecutive dp coordinates (the token exchange), an edp group the dp coordinates with the
  // same dp % ep (expert gradients).
  bool ep = false, edp = false;
  int ep_streams = 0, edp_streams = 0;
};

// node_of_rank: mesh rank -> node index, world() entries; empty: every rank on one node.
GroupsCrossNodes groups_cross_nodes(const Layout& layout, const std::vector<int>& node_of_rank);

// Block placement of `world` ranks, `ranks_per_node` to a node (the launcher's --map-by slot):
// for planning a world other than the one calibrated.
std::vector<int> block_placement(int world, int ranks_per_node);

}  // namespace trident::plan
