// Adapter-only gradient buffers (nn/parameters.h ParamInfo::grad_offset, docs/lora.md "Frozen
// base"): the flat gradient buffer holds the trained parameters only, a frozen one has no slot
// (grad() null), AdamW reads each trained element's gradient at its place in that buffer and
// updates bitwise as on a parameter set holding the trained parameters alone, and ZeRO 0-1's
// buckets are ranges of it that no frozen parameter joins. Nothing frozen: the layouts agree.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "core/memory.h"
#include "nn/parameters.h"
#include "optim/adamw.h"
#include "parallel/ddp_reducer.h"

namespace trident {
namespace {

struct Spec {
  int64_t numel;
  bool frozen;
  bool decay;
};
// Frozen runs between, before and after trained ones; decay flips inside the trained ones.
const std::vector<Spec> kSpecs = {{700, true, true}, {37, false, true},  {300, false, false}, {5, true, false},
                                  {1200, false, true}, {64, true, true}, {90, false, false}, {400, true, false}};

nn::ParameterSet make(MemoryTracker& tracker, bool trained_only, bool freeze) {
  nn::ParameterSet ps;
  ps.begin_group("a");
  for (std::size_t i = 0; i < kSpecs.size(); ++i) {
    if (i == 4) ps.begin_group("b");
    if (trained_only && kSpecs[i].frozen) continue;
    nn::ParamInfo p;
    p.name = fmt::format("p{}", i);
    p.logical_shape = {kSpecs[i].numel};
    p.weight_decay = kSpecs[i].decay;
    p.frozen = freeze && kSpecs[i].frozen;
    ps.add(p);
  }
  ps.allocate(tracker);
  return ps;
}

float value_of(int64_t i, int salt) { return 0.01f * static_cast<float>((i * 7919 + salt * 104729) % 2001 - 1000); }

TEST(LoraGradBuffer, HoldsTheTrainedParametersOnly) {
  MemoryTracker tracker;
  nn::ParameterSet ps = make(tracker, false, true);
  int64_t trained = 0;
  for (const Spec& s : kSpecs) trained += s.frozen ? 0 : s.numel;
  EXPECT_EQ(ps.grad_numel(), trained);
  EXPECT_EQ(ps.grads().size(), static_cast<std::size_t>(trained));
  EXPECT_EQ(tracker.current(MemCategory::kGradients), static_cast<std::size_t>(4 * trained));
  int64_t at = 0;
  for (int id = 0; id < ps.size(); ++id) {
    const nn::ParamInfo& p = ps.info(id);
    if (p.frozen) {
      EXPECT_EQ(p.grad_offset, -1) << p.name;
      EXPECT_EQ(ps.grad(id), nullptr) << p.name;
      continue;
    }
    EXPECT_EQ(p.grad_offset, at) << p.name;  // registration order, frozen ones stepped over
    EXPECT_EQ(ps.grad(id), ps.grads().data() + at) << p.name;
    at += p.numel;
  }
  // Nothing frozen: the gradient layout is the value layout.
  MemoryTracker t2;
  nn::ParameterSet full = make(t2, false, false);
  EXPECT_EQ(full.grad_numel(), full.total_numel());
  for (int id = 0; id < full.size(); ++id) EXPECT_EQ(full.info(id).grad_offset, full.info(id).offset);
}

TEST(LoraGradBuffer, AdamWReadsTheGradientLayoutBitwiseAsTheTrainedAlone) {
  MemoryTracker tracker;
  nn::ParameterSet ps = make(tracker, false, true);
  nn::ParameterSet ref = make(tracker, true, false);  // the trained parameters alone
  for (int id = 0; id < ps.size(); ++id) {
    const nn::ParamInfo& p = ps.info(id);
    const int r = ref.find(p.name);
    for (int64_t j = 0; j < p.numel; ++j) {
      ps.data(id)[j] = value_of(p.offset + j, 1);
      if (r >= 0) ref.data(r)[j] = ps.data(id)[j];
    }
    if (r < 0) continue;
    for (int64_t j = 0; j < p.numel; ++j) ps.grad(id)[j] = ref.grad(r)[j] = value_of(p.offset + j, 2);
  }
  const std::vector<float> before(ps.values().data(), ps.values().data() + ps.total_numel());
  using At = optim::AdamW::At;
  const optim::AdamWConfig cfg;
  optim::AdamW a(ps, tracker, cfg), b(ref, tracker, cfg);
  EXPECT_EQ(optim::AdamW::moment_count(ps), ref.total_numel());
  for (int step = 0; step < 3; ++step) {
    a.step(ps.values().data(), ps.grads().data(), 1e-2f, 0.5f, At::kFlat, At::kFlat);
    b.step(ref.values().data(), ref.grads().data(), 1e-2f, 0.5f, At::kFlat, At::kFlat);
  }
  for (int id = 0; id < ps.size(); ++id) {
    const nn::ParamInfo& p = ps.info(id);
    const int r = ref.find(p.name);
    const float* want = r >= 0 ? ref.data(r) : before.data() + p.offset;  // frozen: bitwise unchanged
    ASSERT_EQ(std::memcmp(ps.data(id), want, static_cast<std::size_t>(p.numel) * sizeof(float)), 0) << p.name;
  }
}

TEST(LoraGradBuffer, ZeroOneBucketsCoverTheGradientBufferWithoutFrozenParameters) {
  MemoryTracker tracker;
  nn::ParameterSet ps = make(tracker, false, true);
  for (int64_t cap : {int64_t{1}, int64_t{400}, int64_t{1 << 20}}) {
    const std::vector<parallel::BucketSpan> spans = parallel::assign_buckets(ps, cap, /*grad_layout=*/true);
    int64_t hi = ps.grad_numel();
    for (const parallel::BucketSpan& s : spans) {  // launch order: from the end down, contiguous
      EXPECT_EQ(s.hi, hi) << "cap " << cap;
      EXPECT_FALSE(ps.info(s.first).frozen || ps.info(s.last).frozen) << "cap " << cap;
      EXPECT_EQ(s.lo, ps.info(s.first).grad_offset);
      EXPECT_EQ(s.hi, ps.info(s.last).grad_offset + ps.info(s.last).numel);
      hi = s.lo;
    }
    EXPECT_EQ(hi, 0) << "cap " << cap;
  }
  // The value layout (ZeRO 2-3) is unchanged: it still spans every parameter.
  const std::vector<parallel::BucketSpan> v = parallel::assign_buckets(ps, 1 << 20);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].lo, 0);
  EXPECT_EQ(v[0].hi, ps.total_numel());
}

}  // namespace
}  // namespace trident
