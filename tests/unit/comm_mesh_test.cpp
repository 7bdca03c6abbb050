// Mesh arithmetic and chunk layout, without MPI.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <string>

#include "comm/communicator.h"
#include "comm/mesh.h"
#include "core/check.h"

namespace trident::comm {
namespace {

TEST(CommMesh, CoordinatesTpFastest) {
  const MeshShape s{2, 3, 2};  // pp, dp, tp
  ASSERT_EQ(s.world(), 12);
  for (int r = 0; r < s.world(); ++r) {
    EXPECT_EQ(s.coord(r, kTp), r % 2);
    EXPECT_EQ(s.coord(r, kDp), (r / 2) % 3);
    EXPECT_EQ(s.coord(r, kPp), r / 6);
    EXPECT_EQ(s.rank_of(s.coords(r)), r);
  }
}

TEST(CommMesh, ExpertParallelIsCarvedOutOfDp) {
  const MeshShape s{2, 4, 2, 2};  // pp, dp, tp, ep: dims pp, edp, ep, tp
  ASSERT_EQ(s.dims().size(), 4u);
  EXPECT_EQ(s.size(kDp), 4);
  EXPECT_EQ(s.size(kEp), 2);
  EXPECT_EQ(s.size(kEdp), 2);
  for (int r = 0; r < s.world(); ++r) {
    const int tp = r % 2, dp = (r / 2) % 4, pp = r / 8;  // today's (pp, dp, tp) arithmetic
    auto at = [&](int p, int d, int t) { return (p * 4 + d) * 2 + t; };
    EXPECT_EQ(s.coord(r, kDp), dp);
    EXPECT_EQ(s.coord(r, kEp), dp % 2);
    EXPECT_EQ(s.coord(r, kEdp), dp / 2);
    EXPECT_EQ(s.members(r, kEp), (std::vector<int>{at(pp, dp / 2 * 2, tp), at(pp, dp / 2 * 2 + 1, tp)}));
    EXPECT_EQ(s.members(r, kEdp), (std::vector<int>{at(pp, dp % 2, tp), at(pp, 2 + dp % 2, tp)}));
    EXPECT_EQ(s.members(r, kDp), (std::vector<int>{at(pp, 0, tp), at(pp, 1, tp), at(pp, 2, tp), at(pp, 3, tp)}));
    EXPECT_EQ(s.members(r, kPp), (std::vector<int>{at(0, dp, tp), at(1, dp, tp)}));
    // Ranks share a split colour exactly when they share a group.
    for (int q = 0; q < s.world(); ++q) {
      for (std::string_view g : {kPp, kDp, kEdp, kEp, kTp}) {
        const std::vector<int> m = s.members(r, g);
        EXPECT_EQ(s.split_color(q, g) == s.split_color(r, g), std::find(m.begin(), m.end(), q) != m.end());
      }
    }
  }
}

TEST(CommMesh, ValidateNamesTheProduct) {
  EXPECT_NO_THROW(validate_mesh({2, 2, 2}, 8));
  try {
    validate_mesh(MeshShape{4, 2, 2}, 8);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mesh pp(4) * edp(2) * ep(1) * tp(2) (dp = edp * ep = 2) has 16 ranks "
                                         "!= world size 8"),
              std::string::npos) << e.what();
  }
  EXPECT_THROW(validate_mesh({0, 1, 1}, 0), Error);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(CommMesh, BadShapesNameTheDimension) {
  EXPECT_NE(error_of([] { MeshShape(1, 4, 1, 3); }).find("ep 3 does not divide dp 4"), std::string::npos);
  EXPECT_NE(error_of([] { MeshShape(1, 0, 1); }).find("parallel sizes must be >= 1, got dp(0)"), std::string::npos);
  EXPECT_NE(error_of([] { MeshShape({{"a", 2}, {"b", 0}}, {}); }).find("mesh dimension b has size 0"),
            std::string::npos);
  EXPECT_NE(error_of([] { MeshShape({{"a", 2}, {"b", 2}}, {{"ab", {"b", "a"}}}); }).find("in the mesh's order"),
            std::string::npos);
  EXPECT_NE(error_of([] { MeshShape({{"a", 2}, {"a", 2}}, {}); }).find("mesh name a is declared twice"),
            std::string::npos);
  EXPECT_NE(error_of([] { MeshShape(2, 2, 2).size("cp"); }).find("the mesh has no group cp (it has pp, edp, ep, tp, dp)"),
            std::string::npos);
}

TEST(CommChunks, FirstRanksTakeTheRemainder) {
  EXPECT_EQ(chunk_counts(10, 4), (std::vector<int64_t>{3, 3, 2, 2}));
  EXPECT_EQ(chunk_counts(0, 3), (std::vector<int64_t>{0, 0, 0}));
  EXPECT_EQ(chunk_counts(2, 3), (std::vector<int64_t>{1, 1, 0}));
  auto c = chunk_counts(10, 4);
  EXPECT_EQ(chunk_offsets(c), (std::vector<int64_t>{0, 3, 6, 8}));
}

TEST(CommSignature, Describe) {
  Signature s{OpKind::kAllreduce, DType::kF32, ReduceOp::kAvg, -1, 12, 0, 3};
  EXPECT_EQ(s.describe(), "allreduce(count=12, dtype=f32, op=avg)");
}

}  // namespace
}  // namespace trident::comm
