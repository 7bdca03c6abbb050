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
  const int nodes = 1 + *std::max_element(node_of_rank.begin(), node_of_rank.end());
  auto node_of = [&](const comm::MeshCoord& c) { return node_of_rank[static_cast<std::size_t>(comm::mesh_rank(c, shape))]; };
  // One axis: for each group (visited once, through its member with first(c)), whether it
  // spans nodes and which nodes it touches; member(c, k) is the group's k-th rank.
  auto axis = [&](int size, auto first, auto member, bool& spans, int& streams) {
    std::vector<int> per_node(static_cast<std::size_t>(nodes), 0);
    for (int r = 0; r < shape.world(); ++r) {
      const comm::MeshCoord c = comm::mesh_coord(r, shape);
      if (!first(c)) continue;
      std::vector<bool> touched(static_cast<std::size_t>(nodes), false);
      for (int k = 0; k < size; ++k) touched[static_cast<std::size_t>(node_of(member(c, k)))] = true;
      if (std::count(touched.begin(), touched.end(), true) < 2) continue;
      spans = true;
      for (int n = 0; n < nodes; ++n) per_node[static_cast<std::size_t>(n)] += touched[static_cast<std::size_t>(n)];
    }
    streams = *std::max_element(per_node.begin(), per_node.end());
  };
  // The three mesh axes: a group is the ranks sharing the other two coordinates.
  auto along = [&](int size, int comm::MeshCoord::*field, bool& spans, int& streams) {
    axis(size, [&](const comm::MeshCoord& c) { return c.*field == 0; },
         [&](comm::MeshCoord c, int k) { c.*field = k; return c; }, spans, streams);
  };
  along(l.tp, &comm::MeshCoord::tp, g.tp, g.tp_streams);
  along(l.dp, &comm::MeshCoord::dp, g.dp, g.dp_streams);
  along(l.pp, &comm::MeshCoord::pp, g.pp, g.pp_streams);
  if (l.ep > 1) {
    const int ep = l.ep;
    axis(ep, [&](const comm::MeshCoord& c) { return c.dp % ep == 0; },
         [&](comm::MeshCoord c, int k) { c.dp += k; return c; }, g.ep, g.ep_streams);
    axis(l.dp / ep, [&](const comm::MeshCoord& c) { return c.dp < ep; },
         [&](comm::MeshCoord c, int k) { c.dp += k * ep; return c; }, g.edp, g.edp_streams);
  }
  return g;
}

std::vector<int> block_placement(int world, int ranks_per_node) {
  std::vector<int> node(static_cast<std::size_t>(std::max(0, world)));
  for (int r = 0; r < world; ++r) node[static_cast<std::size_t>(r)] = r / std::max(1, ranks_per_node);
  return node;
}

}  // namespace trident::plan
