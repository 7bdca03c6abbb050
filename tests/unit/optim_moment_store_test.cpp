// The moment store (optim/moment_store.h): AdamW over an offloaded store gives bitwise the
// values and moments of the in-memory store (blocks that split the decay ranges anywhere,
// a last partial block), random access reads/writes across block edges keep the neighbours,
// the accounting puts the moments under "offloaded" and only the staging buffers in the
// resident total, a second store on the same file is refused while the first lives, a
// missing directory is one clear error, and a clean exit removes the file. With values
// (--offload optimizer+params): the update in the store, prefetch() of any range.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/check.h"
#include "nn/parameters.h"
#include "optim/adamw.h"
#include "optim/moment_store.h"

namespace trident::optim {
namespace {

namespace fs = std::filesystem;
constexpr int64_t kBlock = 4096;  // bytes: 1024 floats per block

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/trident_moment_store_XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
};

// Parameters whose decay setting flips at offsets that are not block multiples.
nn::ParameterSet make_params(MemoryTracker& tracker, int frozen = -1) {
  nn::ParameterSet ps;
  ps.begin_group("g");
  const int64_t sizes[] = {1500, 37, 2600, 1, 900};
  for (int i = 0; i < 5; ++i) {
    nn::ParamInfo p;
    p.name = fmt::format("p{}", i);
    p.logical_shape = p.local_shape = {sizes[i]};
    p.weight_decay = i % 2 == 0;
    p.frozen = i == frozen;
    ps.add(p);
  }
  ps.allocate(tracker);
  return ps;
}

void fill(std::vector<float>& x, uint64_t seed) {
  uint64_t s = seed;
  for (float& f : x) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    f = static_cast<float>(static_cast<int64_t>(s >> 40) - (1LL << 23)) / static_cast<float>(1 << 23);
  }
}

TEST(MomentStore, OffloadedAdamWIsBitwiseInMemoryAdamW) {
  TempDir dir;
  MemoryTracker tracker;
  nn::ParameterSet ps = make_params(tracker);
  const int64_t n = ps.total_numel();
  const int64_t begin = 123, end = n - 7;  // a ZeRO-like shard, not block aligned
  AdamWConfig cfg;
  AdamW mem(ps, tracker, cfg, begin, end);
  AdamW off(ps, tracker, cfg, begin, end,
            make_offloaded_moment_store(tracker, end - begin, (dir.path / "m.bin").string(), kBlock));
  std::vector<float> w0(static_cast<std::size_t>(n)), g(w0.size());
  fill(w0, 1);
  std::vector<float> wa = w0, wb = w0;
  for (int step = 0; step < 5; ++step) {
    fill(g, 100 + static_cast<uint64_t>(step));
    mem.step(wa.data() + begin, g.data() + begin, 1e-2f, 0.7f);
    off.step(wb.data() + begin, g.data() + begin, 1e-2f, 0.7f);
  }
  EXPECT_EQ(std::memcmp(wa.data(), wb.data(), wa.size() * sizeof(float)), 0);
  EXPECT_NE(std::memcmp(wa.data(), w0.data(), wa.size() * sizeof(float)), 0);  // it moved
  for (int kind = 0; kind < 2; ++kind) {
    std::vector<float> a(static_cast<std::size_t>(end - begin)), b(a.size());
    mem.moments().read(kind, 0, end - begin, a.data());
    off.moments().read(kind, 0, end - begin, b.data());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "kind " << kind;
  }
  const MomentStore::IoStats io = off.moments().io_stats();
  const double file_bytes = 5.0 * 2 * kBlock;  // 4988 elements: 5 blocks of both moments
  EXPECT_GE(io.bytes_read, 5 * file_bytes);
  EXPECT_GE(io.bytes_written, 5 * file_bytes);
}

TEST(MomentStore, RandomAccessAcrossBlocksKeepsNeighbours) {
  TempDir dir;
  MemoryTracker tracker;
  const int64_t n = 3000;
  auto store = make_offloaded_moment_store(tracker, n, (dir.path / "m.bin").string(), kBlock);
  std::vector<float> m(static_cast<std::size_t>(n)), v(m.size());
  fill(m, 7);
  fill(v, 8);
  store->write(0, 0, n, m.data());
  store->write(1, 0, n, v.data());
  // A piece straddling blocks 0 and 1 rewritten: the rest of both blocks stays.
  std::vector<float> piece(100, 42.0f);
  store->write(1, 1000, 100, piece.data());
  std::copy(piece.begin(), piece.end(), v.begin() + 1000);
  std::vector<float> back(m.size());
  store->read(0, 0, n, back.data());
  EXPECT_EQ(back, m);
  store->read(1, 0, n, back.data());
  EXPECT_EQ(back, v);
  // update() sees what write() stored, block by block, and its changes persist.
  int64_t seen = 0;
  store->update([&](const MomentStore::Block& blk) {
    const int64_t b = blk.begin, count = blk.count;
    float* bm = blk.m;
    float* bv = blk.v;
    EXPECT_EQ(blk.w, nullptr);
    EXPECT_EQ(b, seen);
    for (int64_t i = 0; i < count; ++i) {
      EXPECT_EQ(bm[i], m[static_cast<std::size_t>(b + i)]);
      EXPECT_EQ(bv[i], v[static_cast<std::size_t>(b + i)]);
      bm[i] += 1.0f;
    }
    seen += count;
  });
  EXPECT_EQ(seen, n);
  store->read(0, 2990, 10, back.data());
  for (int i = 0; i < 10; ++i) EXPECT_EQ(back[static_cast<std::size_t>(i)], m[2990 + static_cast<std::size_t>(i)] + 1.0f);
}

// --offload optimizer+params: the values are a third part of every block. AdamW updating them
// in the store gives the bits of AdamW updating an in-memory buffer (the values then
// read back), and prefetch() of any range -- inside one block, from the middle of one block
// into the next, across three, at the unaligned end of the last -- returns exactly those
// elements, counted under parameters while it lives.
TEST(MomentStore, ValuesInTheStoreAndTheirPrefetch) {
  TempDir dir;
  MemoryTracker tracker;
  nn::ParameterSet ps = make_params(tracker);
  const int64_t n = ps.total_numel();
  AdamWConfig cfg;
  AdamW mem(ps, tracker, cfg);
  AdamW off(ps, tracker, cfg, 0, -1,
            make_offloaded_moment_store(tracker, n, (dir.path / "m.state").string(), kBlock, ValueRuns{{0, n}}));
  ASSERT_TRUE(off.moments().holds_values());
  std::vector<float> w(static_cast<std::size_t>(n)), g(w.size());
  fill(w, 3);
  off.moments().write(2, 0, n, w.data());
  for (int step = 0; step < 4; ++step) {
    fill(g, 200 + static_cast<uint64_t>(step));
    mem.step(w.data(), g.data(), 1e-2f, 0.9f);
    off.step(nullptr, g.data(), 1e-2f, 0.9f);
  }
  std::vector<float> back(w.size());
  off.moments().read(2, 0, n, back.data());
  EXPECT_EQ(back, w);
  for (int kind = 0; kind < 2; ++kind) {
    std::vector<float> a(w.size()), b(w.size());
    mem.moments().read(kind, 0, n, a.data());
    off.moments().read(kind, 0, n, b.data());
    EXPECT_EQ(a, b) << "kind " << kind;
  }
  const std::pair<int64_t, int64_t> ranges[] = {{0, 1}, {5, 300}, {1000, 100}, {777, 2500}, {4000, n - 4000}, {n - 1, 1}};
  for (const auto& [b, c] : ranges) {
    const std::size_t before = tracker.current(MemCategory::kParameters);
    {
      auto pre = off.moments().prefetch(2, b, c);
      EXPECT_GT(tracker.current(MemCategory::kParameters), before);
      const float* got = pre->data();
      for (int64_t i = 0; i < c; ++i) {
        ASSERT_EQ(got[i], w[static_cast<std::size_t>(b + i)]) << "range [" << b << ", +" << c << ") at " << i;
      }
    }
    EXPECT_EQ(tracker.current(MemCategory::kParameters), before);
  }
  EXPECT_THROW(mem.moments().read(2, 0, 1, back.data()), Error);  // the in-memory store has none
}

// ZeRO-1/2's offloaded fp32 master: the store holds the values of some elements only (runs in
// store indices, cut by block boundaries and empty in some blocks), indexed by value index. Each
// update block hands over exactly the values of its elements in the runs, write() and read() by
// value index keep the neighbours (also inside a part that is not whole pages), and the disk
// holds 8 bytes per element plus 4 per value.
TEST(MomentStore, SomeValuesInTheStore) {
  TempDir dir;
  MemoryTracker tracker;
  const int64_t n = 5000;  // kBlock / 4 = 1024 elements a block: 5 blocks
  const int64_t block = kBlock / static_cast<int64_t>(sizeof(float));
  const ValueRuns runs = {{10, 20}, {1000, 2100}, {2100, 2101}, {4500, 5000}};  // block 3 holds none
  int64_t held = 0;
  for (const auto& [a, b] : runs) held += b - a;
  auto store = make_offloaded_moment_store(tracker, n, (dir.path / "m.state").string(), kBlock, runs);
  EXPECT_EQ(store->value_count(), held);
  EXPECT_FALSE(store->holds_values());
  EXPECT_EQ(tracker.current(MemCategory::kOffloaded), static_cast<std::size_t>(8 * n + 4 * held));
  EXPECT_EQ(tracker.current(MemCategory::kOptimizerState), static_cast<std::size_t>(3 * 3 * kBlock));
  std::vector<float> w(static_cast<std::size_t>(held)), m(static_cast<std::size_t>(n));
  fill(w, 11);
  fill(m, 12);
  store->write(2, 0, held, w.data());
  store->write(0, 0, n, m.data());
  std::vector<float> piece(300, -3.0f);  // value indices 5..305: runs 0 and 1, blocks 0 and 0-1
  store->write(2, 5, 300, piece.data());
  std::copy(piece.begin(), piece.end(), w.begin() + 5);
  std::vector<float> back(w.size());
  store->read(2, 0, held, back.data());
  EXPECT_EQ(back, w);
  // The value index of store element e (-1: none held).
  auto value_of = [&](int64_t e) {
    int64_t at = 0;
    for (const auto& [a, b] : runs) {
      if (e >= a && e < b) return at + (e - a);
      at += b - a;
    }
    return int64_t{-1};
  };
  int64_t seen = 0, values_seen = 0;
  store->update([&](const MomentStore::Block& blk) {
    ASSERT_NE(blk.w, nullptr);
    EXPECT_EQ(blk.begin, seen);
    EXPECT_EQ(blk.w_first, values_seen);
    int64_t count = 0;
    for (int64_t e = blk.begin; e < blk.begin + blk.count; ++e) {
      const int64_t v = value_of(e);
      if (v < 0) continue;
      EXPECT_EQ(v, blk.w_first + count) << "element " << e;
      EXPECT_EQ(blk.w[count], w[static_cast<std::size_t>(v)]) << "element " << e;
      blk.w[count] += 1.0f;
      ++count;
    }
    EXPECT_EQ(blk.w_count, count) << "block at " << blk.begin;
    EXPECT_EQ(blk.m[0], m[static_cast<std::size_t>(blk.begin)]);
    if (blk.begin == 3 * block) {
      EXPECT_EQ(count, 0);
    }
    seen += blk.count;
    values_seen += count;
  });
  EXPECT_EQ(seen, n);
  EXPECT_EQ(values_seen, held);
  store->read(2, 0, held, back.data());
  for (std::size_t i = 0; i < w.size(); ++i) ASSERT_EQ(back[i], w[i] + 1.0f) << "value " << i;
  std::vector<float> mb(m.size());
  store->read(0, 0, n, mb.data());
  EXPECT_EQ(mb, m);
  EXPECT_THROW(store->read(2, held - 1, 2, back.data()), Error);  // past the values held
  EXPECT_THROW(store->prefetch(2, 0, 1), Error);  // prefetch is ZeRO-3's, of every element's values
  EXPECT_THROW(make_offloaded_moment_store(tracker, n, (dir.path / "x.state").string(), kBlock,
                                           ValueRuns{{10, 20}, {15, 30}}),
               Error);  // overlapping runs
}

// A store holding values holds every element: frozen parameters (no moments) are refused.
TEST(MomentStore, ValuesWithFrozenParametersAreRefused) {
  TempDir dir;
  MemoryTracker tracker;
  nn::ParameterSet ps = make_params(tracker, /*frozen=*/1);
  const int64_t trained = AdamW::moment_count(ps);
  try {
    AdamW off(ps, tracker, AdamWConfig{}, 0, -1,
              make_offloaded_moment_store(tracker, trained, (dir.path / "m.state").string(), kBlock,
                                          ValueRuns{{0, trained}}));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("use --offload optimizer"), std::string::npos) << e.what();
  }
}

TEST(MomentStore, AccountsOffloadedApartFromResident) {
  TempDir dir;
  MemoryTracker tracker;
  const int64_t n = 10000;
  {
    auto store = make_offloaded_moment_store(tracker, n, (dir.path / "m.bin").string(), kBlock);
    EXPECT_EQ(tracker.current(MemCategory::kOffloaded), static_cast<std::size_t>(8 * n));
    EXPECT_EQ(tracker.current(MemCategory::kOptimizerState), static_cast<std::size_t>(3 * 2 * kBlock));
    EXPECT_EQ(tracker.current_total(), static_cast<std::size_t>(3 * 2 * kBlock));
    EXPECT_NE(tracker.report().find("offloaded"), std::string::npos);
    EXPECT_TRUE(fs::exists(dir.path / "m.bin"));
  }
  EXPECT_EQ(tracker.current_total(), 0u);
  EXPECT_EQ(tracker.current(MemCategory::kOffloaded), 0u);
  EXPECT_FALSE(fs::exists(dir.path / "m.bin"));  // a clean exit leaves nothing behind
  auto mem = make_memory_moment_store(tracker, n);
  EXPECT_EQ(tracker.current(MemCategory::kOptimizerState), static_cast<std::size_t>(8 * n));
  EXPECT_EQ(tracker.current(MemCategory::kOffloaded), 0u);
}

TEST(MomentStore, SecondLiveUserOfTheFileIsRefused) {
  TempDir dir;
  MemoryTracker tracker;
  OffloadOptions o{OffloadKind::kOptimizer, dir.path.string(), kBlock / 1024};
  auto first = make_moment_store(tracker, 5000, o, 0, 0);
  try {
    auto second = make_moment_store(tracker, 5000, o, 0, 0);
    FAIL() << "a second store on the same rank's file was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("in use by another live run"), std::string::npos) << e.what();
  }
  auto other_rank = make_moment_store(tracker, 5000, o, 1, 0);  // ranks of one run never collide
  EXPECT_NE(other_rank->describe().find("rank00001"), std::string::npos);
}

TEST(MomentStore, MissingDirectoryIsOneClearError) {
  MemoryTracker tracker;
  OffloadOptions o{OffloadKind::kOptimizer, "/nonexistent/trident_offload", kBlock / 1024};
  try {
    make_moment_store(tracker, 100, o, 0, 0);
    FAIL() << "a missing directory was accepted";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("/nonexistent/trident_offload"), std::string::npos) << what;
    EXPECT_NE(what.find("--offload-dir"), std::string::npos) << what;
  }
  EXPECT_THROW(make_offloaded_moment_store(tracker, 100, "/tmp/x.bin", 1000), Error);  // unaligned block
}

}  // namespace
}  // namespace trident::optim
