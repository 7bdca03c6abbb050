// node_major_order / describe_placement: regrouping ranks by node and the placement report; and
// NodeMajorWorld itself over the in-process backend (one process is one node), feeding a Mesh.
#include <gtest/gtest.h>

#include <mutex>

#include "comm/in_process.h"
#include "comm/mesh.h"
#include "comm/node_order.h"
#include "core/check.h"

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

TEST(NodeOrder, NodeMajorWorldOverThreadsIsOneNodeAndKeepsTheOrder) {
  CommOptions o;
  o.timeout_s = 30.0;
  o.on_timeout = TimeoutAction::kThrow;
  std::mutex m;
  std::vector<int> nodes, node_of_sizes;
  run_in_process(4, [&](Communicator& launcher) {
    NodeMajorWorld placed(launcher, "world", o);
    EXPECT_EQ(placed.nodes(), 1);
    EXPECT_EQ(placed.node_of(), (std::vector<int>{0, 0, 0, 0}));
    EXPECT_EQ(placed.describe(2), "");  // one node: nothing to report
    const int r = launcher.rank();
    Mesh mesh(placed.take_world(), MeshShape{1, 2, 2});
    EXPECT_EQ(mesh.rank(), r);  // nothing moves on one node
    EXPECT_EQ(mesh.world().name(), "world");
    EXPECT_EQ(mesh.world().options().timeout_s, 30.0);
    std::vector<int64_t> v{r};
    mesh.tp().allreduce(std::span(v)).wait();
    EXPECT_EQ(v[0], r / 2 * 4 + 1);  // (2q) + (2q + 1)
    EXPECT_THROW(placed.take_world(), Error);
  }, o);
}

}  // namespace
}  // namespace trident::comm
