// Group spans over nodes (see placement.h).
#include "plan/placement.h"

#include <algorithm>
#include <string_view>

#include "comm/mesh.h"
#include "core/check.h"

namespace trident::plan {

GroupsCrossNodes groups_cross_nodes(const Layout& l, const std::vector<int>& node_of_rank) {
  GroupsCrossNodes g;
  if (node_of_rank.empty()) return g;
  const comm::MeshShape shape(l.pp, l.dp, l.tp, l.ep);
  TRI_CHECK(static_cast<int>(node_of_rank.size()) == shape.world(),
            "rank placement has {} ranks but layout {} has {}", node_of_rank.size(), l.shape(), shape.world());
  const int nodes = 1 + *std::max_element(node_of_rank.begin(), node_of_rank.end());
  // One group name: for each of its groups (visited once, through its group rank 0), whether
  // it spans nodes and which nodes it touches.
  auto along = [&](std::string_view group, bool& spans, int& streams) {
    std::vector<int> per_node(static_cast<std::size_t>(nodes), 0);
    for (int r = 0; r < shape.world(); ++r) {
      if (shape.coord(r, group) != 0) continue;
      std::vector<bool> touched(static_cast<std::size_t>(nodes), false);
      for (int m : shape.members(r, group)) touched[static_cast<std::size_t>(node_of_rank[static_cast<std::size_t>(m)])] = true;
      if (std::count(touched.begin(), touched.end(), true) < 2) continue;
      spans = true;
      for (int n = 0; n < nodes; ++n) per_node[static_cast<std::size_t>(n)] += touched[static_cast<std::size_t>(n)];
    }
    streams = *std::max_element(per_node.begin(), per_node.end());
  };
  along(comm::kTp, g.tp, g.tp_streams);
  along(comm::kDp, g.dp, g.dp_streams);
  along(comm::kPp, g.pp, g.pp_streams);
  if (l.ep > 1) {
    along(comm::kEp, g.ep, g.ep_streams);
    along(comm::kEdp, g.edp, g.edp_streams);
  }
  return g;
}

std::vector<int> block_placement(int world, int ranks_per_node) {
  std::vector<int> node(static_cast<std::size_t>(std::max(0, world)));
  for (int r = 0; r < world; ++r) node[static_cast<std::size_t>(r)] = r / std::max(1, ranks_per_node);
  return node;
}

}  // namespace trident::plan
