// GPTQ on one matrix (see gptq.h).
#include "quant/gptq.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "core/check.h"
#include "kernels/kernels.h"

namespace trident::quant {

Hessian::Hessian(int64_t cols)
    : cols_(cols), h_(static_cast<std::size_t>(cols * cols), 0.0), tmp_(static_cast<std::size_t>(cols * cols)) {}

void Hessian::add(const float* x, int64_t n) {
  std::fill(tmp_.begin(), tmp_.end(), 0.0f);
  kernels::matmul_backward(nullptr, tmp_.data(), nullptr, x, x, nullptr, n, cols_, cols_);  // X^T X
  for (std::size_t k = 0; k < h_.size(); ++k) h_[k] += 2.0 * static_cast<double>(tmp_[k]);
  rows_ += n;
}

namespace {

// In place: a (n, n) symmetric positive definite -> its lower Cholesky factor L (a = L L^T),
// the upper triangle zeroed. Returns false when a pivot is not positive.
bool cholesky_lower(std::vector<double>& a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    double* lj = a.data() + j * n;
    double d = lj[j];
    for (int64_t k = 0; k < j; ++k) d -= lj[k] * lj[k];
    if (!(d > 0.0)) return false;
    lj[j] = std::sqrt(d);
#pragma omp parallel for schedule(static)
    for (int64_t i = j + 1; i < n; ++i) {
      double* li = a.data() + i * n;
      double s = li[j];
      for (int64_t k = 0; k < j; ++k) s -= li[k] * lj[k];
      li[j] = s / lj[j];
    }
  }
  for (int64_t i = 0; i < n; ++i) std::fill(a.begin() + i * n + i + 1, a.begin() + (i + 1) * n, 0.0);
  return true;
}

// The upper Cholesky factor U of H^-1 (H^-1 = U^T U), from H's lower factor L (H = L L^T):
// H^-1 = L^-T L^-1, then factorised again.
std::vector<double> upper_cholesky_of_inverse(std::vector<double> l, int64_t n) {
  // Yt = (L^-1)^T, upper: column j of L^-1 by forward substitution, stored as row j of Yt.
  std::vector<double> yt(static_cast<std::size_t>(n * n), 0.0);
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t j = 0; j < n; ++j) {
    double* y = yt.data() + j * n;  // y_i = (L^-1)_{i j}, i >= j
    for (int64_t i = j; i < n; ++i) {
      const double* li = l.data() + i * n;
      double s = i == j ? 1.0 : 0.0;
      for (int64_t k = j; k < i; ++k) s -= li[k] * y[k];
      y[i] = s / li[i];
    }
  }
  // H^-1_{ab} = sum_k (L^-1)_{k a} (L^-1)_{k b} = sum_{k >= max(a, b)} Yt_{a k} Yt_{b k}.
  std::vector<double> inv(static_cast<std::size_t>(n * n));
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t a = 0; a < n; ++a) {
    for (int64_t b = 0; b <= a; ++b) {
      const double *ya = yt.data() + a * n, *yb = yt.data() + b * n;
      double s = 0.0;
      for (int64_t k = a; k < n; ++k) s += ya[k] * yb[k];
      inv[static_cast<std::size_t>(a * n + b)] = inv[static_cast<std::size_t>(b * n + a)] = s;
    }
  }
  TRI_CHECK(cholesky_lower(inv, n), "GPTQ: the inverse Hessian ({} x {}) is not positive definite in fp64", n, n);
  // U = L2^T.
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < i; ++j) std::swap(inv[static_cast<std::size_t>(i * n + j)], inv[static_cast<std::size_t>(j * n + i)]);
  }
  return inv;
}

}  // namespace

QuantMatrix gptq_quantize(const float* w, int64_t rows, int64_t cols, Format format, int group,
                          const std::vector<double>& h, const GptqOptions& opt) {
  TRI_CHECK(format == Format::kInt8 || format == Format::kQ4, "GPTQ quantizes to int8 or q4, not {}", format_name(format));
  TRI_CHECK(static_cast<int64_t>(h.size()) == cols * cols, "GPTQ: the Hessian holds {} values, a {} x {} one is needed",
            h.size(), cols, cols);
  TRI_CHECK(opt.block > 0 && opt.damp >= 0.0, "GPTQ: block {} must be positive and damp {} not negative", opt.block, opt.damp);
  if (format == Format::kQ4) check_q4_group(rows, cols, group);
  const int64_t I = cols, O = rows, B = opt.block;
  // Dampened H (dead inputs get 1 on the diagonal first), then U = chol(H^-1) upper.
  std::vector<double> a = h;
  double mean_diag = 0.0;
  for (int64_t i = 0; i < I; ++i) {
    double& d = a[static_cast<std::size_t>(i * I + i)];
    TRI_CHECK(std::isfinite(d) && d >= 0.0, "GPTQ: the Hessian's diagonal holds {} at {}; the calibration inputs "
              "are not finite", d, i);
    if (d == 0.0) d = 1.0;
    mean_diag += d;
  }
  mean_diag /= static_cast<double>(I);
  for (int64_t i = 0; i < I; ++i) a[static_cast<std::size_t>(i * I + i)] += opt.damp * mean_diag;
  TRI_CHECK(cholesky_lower(a, I), "GPTQ: the dampened Hessian ({} x {}) is not positive definite; the calibration "
            "inputs are degenerate (raise the dampening)", I, I);
  const std::vector<double> u = upper_cholesky_of_inverse(std::move(a), I);

  QuantMatrix m;
  m.format = format, m.rows = O, m.cols = I;
  const auto n = static_cast<std::size_t>(O * I);
  std::vector<double> wd(w, w + n);
  if (format == Format::kInt8) {
    m.q8.resize(n);
    m.scale.resize(static_cast<std::size_t>(O));
    for (int64_t o = 0; o < O; ++o) m.scale[static_cast<std::size_t>(o)] = int8_scale(w + o * I, I);
  } else {
    m.group = group;
    m.q4.assign(n / 2, 0);
    m.scale.resize(static_cast<std::size_t>(O * m.groups_per_row()));
    m.offset.resize(m.scale.size());
  }
  const int64_t groups = m.groups_per_row();
  std::vector<double> err(static_cast<std::size_t>(O * B));  // (O, block): scaled errors of the block
  for (int64_t i1 = 0; i1 < I; i1 += B) {
    const int64_t i2 = std::min(i1 + B, I);
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < O; ++o) {
      double* row = wd.data() + o * I;
      for (int64_t i = i1; i < i2; ++i) {
        double deq;
        if (format == Format::kInt8) {
          const float s = m.scale[static_cast<std::size_t>(o)];
          const int8_t q = int8_code(static_cast<float>(row[i]), s);
          m.q8[static_cast<std::size_t>(o * I + i)] = q;
          deq = static_cast<double>(s) * q;
        } else {
          const auto k = static_cast<std::size_t>(o * groups + i / group);
          if (i % group == 0) {  // the group starts: its grid from its weights as updated so far
            std::array<float, 128> x{};
            for (int64_t j = 0; j < group; ++j) x[static_cast<std::size_t>(j)] = static_cast<float>(row[i + j]);
            const Q4Grid g = q4_grid(x.data(), group);
            m.scale[k] = g.scale, m.offset[k] = g.offset;
          }
          const uint8_t q = q4_code(static_cast<float>(row[i]), {m.scale[k], m.offset[k]});
          put_q4(m, o, i, q);
          deq = static_cast<double>(m.scale[k]) * q + static_cast<double>(m.offset[k]);
        }
        const double* ui = u.data() + i * I;
        const double e = (row[i] - deq) / ui[i];
        err[static_cast<std::size_t>(o * B + (i - i1))] = e;
        for (int64_t j = i + 1; j < i2; ++j) row[j] -= e * ui[j];
      }
      // The block's errors reach the later columns once: W[:, i2:] -= E U[i1:i2, i2:].
      for (int64_t i = i1; i < i2; ++i) {
        const double e = err[static_cast<std::size_t>(o * B + (i - i1))];
        const double* ui = u.data() + i * I;
        for (int64_t j = i2; j < I; ++j) row[j] -= e * ui[j];
      }
    }
  }
  if (format == Format::kInt8) m.finish_int8();
  return m;
}

double quadratic_error(const float* w, const QuantMatrix* q, int64_t rows, int64_t cols, const std::vector<double>& h) {
  TRI_CHECK(static_cast<int64_t>(h.size()) == cols * cols, "the Hessian holds {} values, a {} x {} one is needed",
            h.size(), cols, cols);
  TRI_CHECK(q == nullptr || (q->rows == rows && q->cols == cols), "the quantized matrix is {} x {}, not {} x {}",
            q->rows, q->cols, rows, cols);
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (int64_t o = 0; o < rows; ++o) {
    std::vector<double> d(static_cast<std::size_t>(cols));
    for (int64_t i = 0; i < cols; ++i) d[static_cast<std::size_t>(i)] = w[o * cols + i] - (q ? q->at(o, i) : 0.0);
    for (int64_t a = 0; a < cols; ++a) {
      const double* ha = h.data() + a * cols;
      double s = 0.0;
      for (int64_t b = 0; b < cols; ++b) s += ha[b] * d[static_cast<std::size_t>(b)];
      total += d[static_cast<std::size_t>(a)] * s;
    }
  }
  return total;
}

}  // namespace trident::quant
