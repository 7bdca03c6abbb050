// node_major_order / describe_placement: regrouping ranks by node and the placement report.
#include <gtest/gtest.h>

#include "comm/node_order.h"

namespace trident::comm {
namespace {

TEST(NodeOrder, BlockPlacementStaysAsItIs) {
  // --map-by slot over 2 nodes of 4: ranks 0-3 on the first node, 4-7 on the second.
  const std::vector<int> leader = {0, 0, 0, 0, 4, 4, 4, 4};
  EXPECT_EQ(node_major_order(leader), (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));
}

TEST(NodeOrder, RoundRobinPlacementIsRegroupedByNode) {
  // --map-by node over 2 nodes: even launcher ranks on node A, odd ones on node B.
  const std::vector<int> leader = {0, 1, 0, 1, 0, 1, 0, 1};
  EXPECT_EQ(node_major_order(leader), (std::vector<int>{0, 2, 4, 6, 1, 3, 5, 7}));
  // Three nodes, round robin over 6 ranks: nodes in order of their lowest rank.
  EXPECT_EQ(node_major_order({0, 1, 2, 0, 1, 2}), (std::vector<int>{0, 3, 1, 4, 2, 5}));
}

TEST(NodeOrder, DescribesNodesAndSaysNothingOnOneNode) {
  EXPECT_EQ(describe_placement({0, 0}, {"a"}, {0, 1}, 2), "");
  EXPECT_EQ(describe_placement({0, 0, 1, 1}, {"a", "b"}, {0, 1, 2, 3}, 2), "nodes: 2 (a: ranks 0-1; b: ranks 2-3)\n");
  EXPECT_EQ(describe_placement({0, 0, 1, 1}, {"a", "b"}, {0, 2, 1, 3}, 2),
            "nodes: 2 (a: ranks 0-1 (launcher ranks 0,2); b: ranks 2-3 (launcher ranks 1,3))\n");
}

TEST(NodeOrder, WarnsForEveryTpGroupThatSpansNodes) {
  // 3 ranks per node with tp 2: the second tp group (ranks 2-3) has one rank on each node.
  const std::string s = describe_placement({0, 0, 0, 1, 1, 1}, {"a", "b"}, {0, 1, 2, 3, 4, 5}, 2);
  EXPECT_NE(s.find("warning: tp group of ranks 2-3 spans nodes a, b"), std::string::npos) << s;
  EXPECT_EQ(s.find("ranks 0-1 spans"), std::string::npos) << s;
  EXPECT_EQ(s.find("ranks 4-5 spans"), std::string::npos) << s;
}

}  // namespace
}  // namespace trident::comm
