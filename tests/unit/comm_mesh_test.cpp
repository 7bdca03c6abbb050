// Mesh arithmetic and chunk layout, without MPI.
#include <gtest/gtest.h>

#include "comm/communicator.h"
#include "comm/mesh.h"
#include "core/check.h"

namespace trident::comm {
namespace {

TEST(CommMesh, CoordinatesTpFastest) {
  MeshShape s{2, 3, 2};  // pp, dp, tp
  for (int r = 0; r < s.world(); ++r) {
    MeshCoord c = mesh_coord(r, s);
    EXPECT_EQ(c.tp, r % 2);
    EXPECT_EQ(c.dp, (r / 2) % 3);
    EXPECT_EQ(c.pp, r / 6);
    EXPECT_EQ(mesh_rank(c, s), r);
  }
}

TEST(CommMesh, ValidateNamesTheProduct) {
  EXPECT_NO_THROW(validate_mesh({2, 2, 2}, 8));
  try {
    validate_mesh(MeshShape{4, 2, 2}, 8);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dp(2) * tp(2) * pp(4) = 16 != world size 8"),
              std::string::npos) << e.what();
  }
  EXPECT_THROW(validate_mesh({0, 1, 1}, 0), Error);
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
