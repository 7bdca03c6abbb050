// Group spans over nodes (see placement.h).
#include "plan/placement.h"

#include <algorithm>

#include "comm/mesh.h"
#include "core/check.h"

namespace trident::plan {

GroupsCrossNodes groups_cross_nodes(const Layout& l, const std::vector<int>& node_of_rank) {
  GroupsCrossNodes g;
  if (node_of_rank.empty()) return g;
  const comm::MeshShape shape{l.pp, l.dp, l.tp};
  TRI_CHECK(static_cast<int>(node_of_rank.size()) == shape.world(),
            "rank placement has {} ranks but layout {} has {}", node_of_rank.size(), l.shape(), shape.world());
  for (int r = 0; r < shape.world(); ++r) {
    const comm::MeshCoord c = comm::mesh_coord(r, shape);
    const int node = node_of_rank[static_cast<std::size_t>(r)];
    // Compare with the group's first member along each axis.
    auto node_at = [&](comm::MeshCoord head) { return node_of_rank[static_cast<std::size_t>(comm::mesh_rank(head, shape))]; };
    g.tp |= node != node_at({c.pp, c.dp, 0});
    g.dp |= node != node_at({c.pp, 0, c.tp});
    g.pp |= node != node_at({0, c.dp, c.tp});
  }
  return g;
}

std::vector<int> block_placement(int world, int ranks_per_node) {
  std::vector<int> node(static_cast<std::size_t>(std::max(0, world)));
  for (int r = 0; r < world; ++r) node[static_cast<std::size_t>(r)] = r / std::max(1, ranks_per_node);
  return node;
}

}  // namespace trident::plan
