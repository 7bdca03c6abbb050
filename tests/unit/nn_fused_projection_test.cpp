// The fused column-parallel projection (nn/column_parallel_linear.h): a run of adjacent
// nn.Linear weights is one matmul forward and one backward; where the weights or their
// gradients are not adjacent (ZeRO-2 buckets, a pointer moved) each weight is its own product.
// Both paths must give the packed rows, the input gradient and every weight gradient of the
// plain definition (a double-precision reference), and the fusion must engage exactly when the
// run is one matrix in memory.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/memory.h"
#include "core/rng.h"
#include "kernels/kernels.h"
#include "kernels/matmul_engine.h"
#include "nn/column_parallel_linear.h"
#include "nn/param_decl.h"
#include "nn/parameters.h"

namespace trident::nn {
namespace {

constexpr int64_t N = 37, C = 24;
const std::vector<int64_t> kWidths = {16, 8, 8};  // q, k, v of 2 heads, 1 kv head, HS 8

struct Run {
  MemoryTracker tracker;
  ParameterSet ps;
  std::vector<ParamDecl> decls;
  std::vector<const ParamDecl*> ptrs;
  Run() {
    ps.begin_group("layer");
    for (std::size_t i = 0; i < kWidths.size(); ++i) {
      decls.push_back(ParamDecl{.name = fmt::format("w{}", i), .shape = {kWidths[i], C}, .init_std = 0.5f});
    }
    for (const ParamDecl& d : decls) ps.add(shard_for_tp(d, ModelConfig{}, 0, 1));
    for (const ParamDecl& d : decls) ptrs.push_back(&d);
    ps.allocate(tracker);
    ps.initialize(7);
    // Non-zero starting gradients: they must accumulate (+=), not be overwritten.
    for (int id = 0; id < ps.size(); ++id) {
      for (int64_t j = 0; j < ps.info(id).numel; ++j) ps.grad(id)[j] = 0.25f * std::sin(static_cast<float>(j + id));
    }
  }
};

std::vector<float> filled(int64_t n, uint64_t stream) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = normal_at(11, stream, static_cast<uint64_t>(i));
  return v;
}

// Every product is a length-C or length-N reduction of O(1) terms: fp32 error ~ eps * length.
void expect_near_all(const char* what, const float* got, const std::vector<double>& want, int64_t length) {
  const double tol = 8.0 * 1.2e-7 * static_cast<double>(length);
  for (std::size_t i = 0; i < want.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], tol * std::max(1.0, std::abs(want[i]))) << what << " element " << i;
  }
}

void check(bool move_data, bool move_grads, bool expect_fused_values, bool expect_fused_grads) {
  kernels::set_num_threads(2);
  Run r;
  const int64_t W = 32;
  const std::vector<float> x = filled(N * C, 1), dout = filled(N * W, 2);
  // The plain definition, from the initial values and gradients.
  std::vector<double> out_ref(static_cast<std::size_t>(N * W)), dx_ref(static_cast<std::size_t>(N * C), 0.0);
  std::vector<std::vector<double>> dw_ref;
  int64_t col = 0;
  for (int id = 0; id < r.ps.size(); ++id) {
    const int64_t w = kWidths[static_cast<std::size_t>(id)];
    const float* wt = r.ps.data(id);
    std::vector<double> dw(static_cast<std::size_t>(w * C));
    for (int64_t o = 0; o < w; ++o) {
      for (int64_t c = 0; c < C; ++c) {
        double g = r.ps.grad(id)[o * C + c];
        for (int64_t n = 0; n < N; ++n) g += static_cast<double>(dout[n * W + col + o]) * x[n * C + c];
        dw[o * C + c] = g;
      }
    }
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t o = 0; o < w; ++o) {
        double s = 0.0;
        for (int64_t c = 0; c < C; ++c) s += static_cast<double>(x[n * C + c]) * wt[o * C + c];
        out_ref[n * W + col + o] = s;
        for (int64_t c = 0; c < C; ++c) dx_ref[n * C + c] += static_cast<double>(dout[n * W + col + o]) * wt[o * C + c];
      }
    }
    dw_ref.push_back(std::move(dw));
    col += w;
  }
  // Move the middle weight's values and/or gradient out of the run, as ZeRO may.
  std::vector<float> moved_data(r.ps.data(1), r.ps.data(1) + r.ps.info(1).numel);
  std::vector<float> moved_grad(r.ps.grad(1), r.ps.grad(1) + r.ps.info(1).numel);
  if (move_data) r.ps.set_data_ptr(1, moved_data.data());
  if (move_grads) r.ps.set_grad_ptr(1, moved_grad.data());

  const ColumnParallelLinear run(r.ps, r.ptrs);
  ASSERT_EQ(run.out_width(), W);
  EXPECT_EQ(run.fused(r.ps, false), expect_fused_values);
  EXPECT_EQ(run.fused(r.ps, true), expect_fused_grads);
  kernels::MatmulEngine mm;
  std::vector<float> out(static_cast<std::size_t>(N * W)), dx(static_cast<std::size_t>(N * C), -1.0f);
  std::vector<float> work(static_cast<std::size_t>(run.work_floats(N)));
  run.forward(mm, r.ps, out.data(), x.data(), N, work.data());
  expect_near_all("packed output", out.data(), out_ref, C);
  run.backward(mm, r.ps, dx.data(), dout.data(), x.data(), N, work.data());
  expect_near_all("input gradient", dx.data(), dx_ref, W);
  for (int id = 0; id < r.ps.size(); ++id) {
    expect_near_all("weight gradient", r.ps.grad(id), dw_ref[static_cast<std::size_t>(id)], N);
  }
}

TEST(FusedProjection, AdjacentRunIsOneMatrix) { check(false, false, true, true); }
TEST(FusedProjection, GradientsApartFallBackForWeightGradients) { check(false, true, true, false); }
TEST(FusedProjection, ValuesApartFallBackToSeparateProducts) { check(true, false, false, false); }
TEST(FusedProjection, BothApart) { check(true, true, false, false); }

}  // namespace
}  // namespace trident::nn
