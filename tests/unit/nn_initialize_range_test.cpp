// ParameterSet::initialize_range (ZeRO-3's chunked start-up, parallel/ddp_reducer.cpp) draws
// the same bits as ParameterSet::initialize for any local range: whole tensors, a row split
// with a padding chunk (the padded vocabulary), a column split of two chunks (a tensor-parallel
// slice of fused q/k/v), a uniform and a constant init; ranges starting and ending mid-row,
// mid-chunk, and spanning chunk and outer boundaries.
#include <gtest/gtest.h>

#include <cstring>
#include <utility>
#include <vector>

#include "core/memory.h"
#include "nn/parameters.h"

namespace trident::nn {
namespace {

ParamInfo param(const char* name, Shape shape, ShardSpec shard = {}) {
  ParamInfo p;
  p.name = name;
  p.logical_shape = std::move(shape);
  p.shard = std::move(shard);
  return p;
}

ParameterSet make_set() {
  ParameterSet ps;
  ps.begin_group("g");
  ParamInfo full = param("full", {7, 5});
  full.init_std = 0.02f;
  ps.add(full);
  // Rows 3..8 of a 10 x 4 tensor, then 2 padding rows.
  ParamInfo rows = param("rows", {10, 4}, {0, {{3, 6}, {-1, 2}}});
  rows.init_std = 0.5f;
  ps.add(rows);
  // Columns 1..2 and 6..8 of a 3 x 9 tensor (an empty chunk between them).
  ParamInfo cols = param("cols", {3, 9}, {1, {{1, 2}, {4, 0}, {6, 3}}});
  cols.init_uniform = 0.1f;
  ps.add(cols);
  ParamInfo ones = param("ones", {6});
  ones.init_value = 1.0f;
  ps.add(ones);
  return ps;
}

TEST(InitializeRange, SameBitsAsInitializeForEveryRange) {
  MemoryTracker tracker;
  ParameterSet ps = make_set();
  ps.allocate(tracker);
  ps.initialize(42);
  for (int id = 0; id < ps.size(); ++id) {
    const ParamInfo& p = ps.info(id);
    for (int64_t begin = 0; begin <= p.numel; ++begin) {
      for (int64_t count = 0; begin + count <= p.numel; ++count) {
        std::vector<float> out(static_cast<std::size_t>(count) + 1, -7.0f);
        ps.initialize_range(42, id, begin, count, out.data());
        ASSERT_EQ(std::memcmp(out.data(), ps.data(id) + begin, static_cast<std::size_t>(count) * sizeof(float)), 0)
            << p.name << " [" << begin << ", " << begin + count << ")";
        ASSERT_EQ(out[static_cast<std::size_t>(count)], -7.0f) << p.name << ": wrote past the range";
      }
    }
  }
}

TEST(InitializeRange, OutOfRangeIsAClearError) {
  MemoryTracker tracker;
  ParameterSet ps = make_set();
  ps.allocate(tracker, FlatBuffers{false, false});  // no storage needed
  EXPECT_EQ(ps.data(0), nullptr);
  std::vector<float> out(64);
  EXPECT_THROW(ps.initialize_range(1, 0, 30, 6, out.data()), std::exception);
  EXPECT_NO_THROW(ps.initialize_range(1, 0, 30, 5, out.data()));
}

}  // namespace
}  // namespace trident::nn
