// GPTQ on one matrix (quant/gptq.h) against a direct fp64 re-implementation of the paper's
// fixed-order Optimal Brain Surgeon formulation: the dampened H inverted explicitly (Gauss-Jordan),
// each column rounded, its error (w - q) / [H_F^-1]_ii spread over the remaining columns along
// row i of H_F^-1, then column i eliminated from the inverse (H_F^-1 -= h_i h_i^T / h_ii). No
// Cholesky factor, no lazy blocks: what GPTQ's Cholesky rows and 128-column batches must equal.
// The rounding grids are re-derived here from the format's definition (quant_format.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "core/check.h"
#include "quant/gptq.h"
#include "quant/quant_format.h"

namespace trident::quant {
namespace {

struct Problem {
  int64_t rows, cols, n;
  std::vector<float> w;   // (rows, cols)
  std::vector<float> x;   // (n, cols): correlated inputs
  std::vector<double> h;  // 2 X^T X in fp64
};

// Inputs x = z A (A a random mixing matrix, so H is far from diagonal) with per-column scales
// spanning 10x, as activations' channels do; one column optionally dead (always 0).
Problem make_problem(int64_t rows, int64_t cols, int64_t n, uint32_t seed, bool dead_column = false) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  Problem p{rows, cols, n, {}, {}, {}};
  p.w.resize(static_cast<std::size_t>(rows * cols));
  for (auto& v : p.w) v = 0.05f * g(rng);
  std::vector<float> a(static_cast<std::size_t>(cols * cols)), z(static_cast<std::size_t>(n * cols));
  for (auto& v : a) v = g(rng) / std::sqrt(static_cast<float>(cols));
  for (int64_t i = 0; i < cols; ++i) a[static_cast<std::size_t>(i * cols + i)] += 1.0f;
  for (auto& v : z) v = g(rng);
  p.x.assign(static_cast<std::size_t>(n * cols), 0.0f);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t j = 0; j < cols; ++j) {
      double s = 0.0;
      for (int64_t k = 0; k < cols; ++k) s += static_cast<double>(z[t * cols + k]) * a[k * cols + j];
      const double scale = 0.3 + 3.0 * static_cast<double>(j % 7) / 6.0;
      p.x[static_cast<std::size_t>(t * cols + j)] = dead_column && j == 5 ? 0.0f : static_cast<float>(s * scale);
    }
  }
  p.h.assign(static_cast<std::size_t>(cols * cols), 0.0);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < cols; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        p.h[static_cast<std::size_t>(i * cols + j)] +=
            2.0 * static_cast<double>(p.x[t * cols + i]) * static_cast<double>(p.x[t * cols + j]);
      }
    }
  }
  return p;
}

// The reference: codes (O, I), scales and offsets as the format stores them.
struct RefResult {
  std::vector<int> codes;
  std::vector<float> scale, offset;
};

std::vector<double> inverse(std::vector<double> a, int64_t n) {
  std::vector<double> inv(static_cast<std::size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) inv[static_cast<std::size_t>(i * n + i)] = 1.0;
  for (int64_t c = 0; c < n; ++c) {
    int64_t piv = c;
    for (int64_t r = c + 1; r < n; ++r) {
      if (std::abs(a[r * n + c]) > std::abs(a[piv * n + c])) piv = r;
    }
    for (int64_t k = 0; k < n; ++k) std::swap(a[c * n + k], a[piv * n + k]), std::swap(inv[c * n + k], inv[piv * n + k]);
    const double d = a[c * n + c];
    for (int64_t k = 0; k < n; ++k) a[c * n + k] /= d, inv[c * n + k] /= d;
    for (int64_t r = 0; r < n; ++r) {
      if (r == c) continue;
      const double f = a[r * n + c];
      for (int64_t k = 0; k < n; ++k) a[r * n + k] -= f * a[c * n + k], inv[r * n + k] -= f * inv[c * n + k];
    }
  }
  return inv;
}

RefResult reference_gptq(const Problem& p, Format format, int group, double damp) {
  const int64_t O = p.rows, I = p.cols;
  std::vector<double> hd = p.h;
  double mean = 0.0;
  for (int64_t i = 0; i < I; ++i) {
    if (hd[i * I + i] == 0.0) hd[i * I + i] = 1.0;
    mean += hd[i * I + i];
  }
  mean /= static_cast<double>(I);
  for (int64_t i = 0; i < I; ++i) hd[i * I + i] += damp * mean;
  std::vector<double> hinv = inverse(hd, I);
  std::vector<double> w(p.w.begin(), p.w.end());
  RefResult r;
  r.codes.assign(static_cast<std::size_t>(O * I), 0);
  const int64_t groups = format == Format::kQ4 ? I / group : 0;
  if (format == Format::kInt8) {
    for (int64_t o = 0; o < O; ++o) {
      float amax = 0.0f;
      for (int64_t i = 0; i < I; ++i) amax = std::max(amax, std::abs(p.w[o * I + i]));
      r.scale.push_back(amax > 0.0f ? amax / 127.0f : 1.0f);
    }
  } else {
    r.scale.assign(static_cast<std::size_t>(O * groups), 0.0f);
    r.offset.assign(r.scale.size(), 0.0f);
  }
  for (int64_t i = 0; i < I; ++i) {
    for (int64_t o = 0; o < O; ++o) {
      double* row = w.data() + o * I;
      double deq;
      int q;
      if (format == Format::kInt8) {
        const float s = r.scale[o];
        q = static_cast<int>(std::clamp(std::nearbyint(static_cast<float>(row[i]) / s), -127.0f, 127.0f));
        deq = static_cast<double>(s) * q;
      } else {
        const auto k = static_cast<std::size_t>(o * groups + i / group);
        if (i % group == 0) {
          float lo = static_cast<float>(row[i]), hi = lo;
          for (int64_t j = 1; j < group; ++j) {
            lo = std::min(lo, static_cast<float>(row[i + j])), hi = std::max(hi, static_cast<float>(row[i + j]));
          }
          r.scale[k] = hi > lo ? (hi - lo) / 15.0f : 1.0f, r.offset[k] = lo;
        }
        q = static_cast<int>(std::clamp(std::nearbyint((static_cast<float>(row[i]) - r.offset[k]) / r.scale[k]), 0.0f, 15.0f));
        deq = static_cast<double>(r.scale[k]) * q + static_cast<double>(r.offset[k]);
      }
      r.codes[static_cast<std::size_t>(o * I + i)] = q;
      const double e = (row[i] - deq) / hinv[i * I + i];
      for (int64_t j = i + 1; j < I; ++j) row[j] -= e * hinv[i * I + j];
    }
    const double d = hinv[i * I + i];
    for (int64_t a = i + 1; a < I; ++a) {
      for (int64_t b = i + 1; b < I; ++b) hinv[a * I + b] -= hinv[a * I + i] * hinv[i * I + b] / d;
    }
  }
  return r;
}

// Code (o, i) of a packed matrix, read with the documented layout (quant_format.h).
int code_at(const QuantMatrix& m, int64_t o, int64_t i) {
  if (m.format == Format::kInt8) return m.q8[static_cast<std::size_t>(o * m.cols + i)];
  const int64_t g = i / m.group, j = i % m.group, half = m.group / 2;
  const uint8_t byte = m.q4[static_cast<std::size_t>(o * m.cols / 2 + g * half + j % half)];
  return j < half ? (byte & 0xF) : (byte >> 4);
}

void expect_same(const QuantMatrix& m, const RefResult& r, const char* what) {
  int64_t mismatched = 0;
  for (int64_t o = 0; o < m.rows; ++o) {
    for (int64_t i = 0; i < m.cols; ++i) mismatched += code_at(m, o, i) != r.codes[static_cast<std::size_t>(o * m.cols + i)];
  }
  EXPECT_EQ(mismatched, 0) << what << ": codes differing from the fp64 reference, of " << m.rows * m.cols;
  EXPECT_EQ(m.scale, r.scale) << what;
  EXPECT_EQ(m.offset, r.offset) << what;
}

TEST(Gptq, EqualsTheFp64ReferenceCodeForCode) {
  // 256 inputs: two lazy blocks of 128 (and four of 64), so the between-block update is exercised.
  const Problem p = make_problem(24, 256, 400, 7);
  for (const auto& [format, group] : {std::pair{Format::kInt8, 0}, {Format::kQ4, 32}, {Format::kQ4, 128}}) {
    const RefResult r = reference_gptq(p, format, group, 0.01);
    for (int block : {128, 64, 256}) {
      const QuantMatrix m = gptq_quantize(p.w.data(), p.rows, p.cols, format, group, p.h, {0.01, block});
      expect_same(m, r, (std::string(format_name(format)) + " g" + std::to_string(group) + " block " +
                         std::to_string(block)).c_str());
    }
  }
}

TEST(Gptq, IdentityHessianIsRoundToNearestBitForBit) {
  // H = I: no input correlates with another, so no error is fed forward and every code is RTN's.
  const Problem p = make_problem(16, 128, 4, 3);
  std::vector<double> eye(static_cast<std::size_t>(p.cols * p.cols), 0.0);
  for (int64_t i = 0; i < p.cols; ++i) eye[static_cast<std::size_t>(i * p.cols + i)] = 1.0;
  for (const auto& [format, group] : {std::pair{Format::kInt8, 0}, {Format::kQ4, 64}}) {
    const QuantMatrix g = gptq_quantize(p.w.data(), p.rows, p.cols, format, group, eye);
    const QuantMatrix r = quantize(p.w.data(), p.rows, p.cols, format, group);
    EXPECT_EQ(g.q8, r.q8);
    EXPECT_EQ(g.q4, r.q4);
    EXPECT_EQ(g.scale, r.scale);
    EXPECT_EQ(g.offset, r.offset);
  }
}

TEST(Gptq, OutputErrorOnTheCalibrationInputsIsBelowRoundToNearest) {
  const Problem p = make_problem(32, 256, 600, 11);
  for (const auto& [format, group] : {std::pair{Format::kInt8, 0}, {Format::kQ4, 32}, {Format::kQ4, 64}, {Format::kQ4, 128}}) {
    const QuantMatrix g = gptq_quantize(p.w.data(), p.rows, p.cols, format, group, p.h);
    const QuantMatrix r = quantize(p.w.data(), p.rows, p.cols, format, group);
    const double eg = quadratic_error(p.w.data(), &g, p.rows, p.cols, p.h);
    const double er = quadratic_error(p.w.data(), &r, p.rows, p.cols, p.h);
    // GPTQ minimises exactly this (up to the 1% dampening); on correlated inputs it wins clearly.
    EXPECT_LT(eg, 0.9 * er) << format_name(format) << " g" << group << ": gptq " << eg << " rtn " << er;
  }
}

TEST(Gptq, QuadraticErrorIsTwiceTheSquaredOutputError) {
  const Problem p = make_problem(8, 64, 50, 5);
  const QuantMatrix q = quantize(p.w.data(), p.rows, p.cols, Format::kQ4, 32);
  double direct = 0.0, energy = 0.0;  // ||X W^T - X Q^T||_F^2 and ||X W^T||_F^2 in double
  for (int64_t t = 0; t < p.n; ++t) {
    for (int64_t o = 0; o < p.rows; ++o) {
      double y = 0.0, yq = 0.0;
      for (int64_t i = 0; i < p.cols; ++i) {
        y += static_cast<double>(p.x[t * p.cols + i]) * p.w[o * p.cols + i];
        yq += static_cast<double>(p.x[t * p.cols + i]) * q.at(o, i);
      }
      direct += (y - yq) * (y - yq), energy += y * y;
    }
  }
  // Both are sums of ~n I^2 fp64 products: agreement to ~1e-12 relative.
  EXPECT_NEAR(quadratic_error(p.w.data(), &q, p.rows, p.cols, p.h), 2.0 * direct, 1e-9 * direct);
  EXPECT_NEAR(quadratic_error(p.w.data(), nullptr, p.rows, p.cols, p.h), 2.0 * energy, 1e-9 * energy);
}

TEST(Gptq, HessianAccumulatesTwiceXtX) {
  const Problem p = make_problem(4, 64, 96, 9);
  Hessian h(p.cols);
  for (int64_t t = 0; t < p.n; t += 32) h.add(p.x.data() + t * p.cols, 32);
  EXPECT_EQ(h.rows_seen(), p.n);
  // Each call sums 32 fp32 products: |error| <= 2 * 32 eps sum_t |x_ti x_tj| (gamma_32), summed in double.
  for (int64_t i = 0; i < p.cols; ++i) {
    for (int64_t j = 0; j < p.cols; ++j) {
      double abs_sum = 0.0;
      for (int64_t t = 0; t < p.n; ++t) abs_sum += std::abs(static_cast<double>(p.x[t * p.cols + i]) * p.x[t * p.cols + j]);
      const double bound = 2.0 * 32 * 1.2e-7 * abs_sum + 1e-12;
      ASSERT_NEAR(h.h()[static_cast<std::size_t>(i * p.cols + j)], p.h[static_cast<std::size_t>(i * p.cols + j)], bound);
    }
  }
}

TEST(Gptq, DeadInputIsRoundedToNearest) {
  const Problem p = make_problem(8, 64, 200, 13, /*dead_column=*/true);
  ASSERT_EQ(p.h[5 * 64 + 5], 0.0);
  const QuantMatrix g = gptq_quantize(p.w.data(), p.rows, p.cols, Format::kInt8, 0, p.h);
  const QuantMatrix r = quantize(p.w.data(), p.rows, p.cols, Format::kInt8, 0);
  const RefResult ref = reference_gptq(p, Format::kInt8, 0, 0.01);
  expect_same(g, ref, "dead input");
  for (int64_t o = 0; o < p.rows; ++o) EXPECT_EQ(code_at(g, o, 5), code_at(r, o, 5)) << "row " << o;
}

TEST(Gptq, BadInputIsAnError) {
  const Problem p = make_problem(4, 64, 10, 1);
  EXPECT_THROW(gptq_quantize(p.w.data(), p.rows, p.cols, Format::kQ4, 48, p.h), Error);  // unsupported group
  const std::vector<float> w96(4 * 96, 0.5f);  // 64 does not divide 96 inputs
  EXPECT_THROW(gptq_quantize(w96.data(), 4, 96, Format::kQ4, 64, std::vector<double>(96 * 96, 1.0)), Error);
  EXPECT_THROW(gptq_quantize(p.w.data(), p.rows, p.cols, Format::kFp32, 0, p.h), Error);
  EXPECT_THROW(gptq_quantize(p.w.data(), p.rows, p.cols, Format::kInt8, 0, std::vector<double>(10, 0.0)), Error);
  std::vector<double> nan = p.h;
  nan[3 * 64 + 3] = std::nan("");
  EXPECT_THROW(gptq_quantize(p.w.data(), p.rows, p.cols, Format::kInt8, 0, nan), Error);
}

}  // namespace
}  // namespace trident::quant
