// Round-to-nearest quantization and dequantization (see quant_format.h).
#include "quant/quant_format.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace trident::quant {

std::string_view format_name(Format f) {
  switch (f) {
    case Format::kFp32: return "fp32";
    case Format::kInt8: return "int8";
    case Format::kQ4: return "q4";
  }
  return "?";
}

Format parse_format(std::string_view name, bool allow_fp32) {
  if (name == "int8") return Format::kInt8;
  if (name == "q4") return Format::kQ4;
  if (allow_fp32 && name == "fp32") return Format::kFp32;
  TRI_FAIL("unknown quantization format '{}'; choose {}int8 (per output channel) or q4 (4-bit, per group)",
           name, allow_fp32 ? "fp32, " : "");
}

bool valid_group_size(int g) { return g == 32 || g == 64 || g == 128; }

int64_t packed_matrix_bytes(Format format, int64_t rows, int64_t cols, int group) {
  switch (format) {
    case Format::kFp32: return rows * cols * 4;
    case Format::kInt8: return rows * cols + rows * 4;
    case Format::kQ4: return rows * cols / 2 + rows * (group > 0 ? cols / group : 0) * 8;
  }
  return 0;
}

int64_t QuantMatrix::weight_bytes() const { return packed_matrix_bytes(format, rows, cols, group); }

double QuantMatrix::at(int64_t o, int64_t i) const {
  switch (format) {
    case Format::kFp32: return fp32[static_cast<std::size_t>(o * cols + i)];
    case Format::kInt8:
      return static_cast<double>(scale[static_cast<std::size_t>(o)]) * q8[static_cast<std::size_t>(o * cols + i)];
    case Format::kQ4: {
      const int64_t g = i / group, j = i % group, half = group / 2;
      const uint8_t byte = q4[static_cast<std::size_t>(o * cols / 2 + g * half + j % half)];
      const int q = j < half ? (byte & 0xF) : (byte >> 4);
      const auto k = static_cast<std::size_t>(o * groups_per_row() + g);
      return static_cast<double>(scale[k]) * q + static_cast<double>(offset[k]);
    }
  }
  return 0.0;
}

double step_at(const QuantMatrix& m, int64_t o, int64_t i) {
  if (m.format == Format::kInt8) return m.scale[static_cast<std::size_t>(o)];
  if (m.format == Format::kQ4) return m.scale[static_cast<std::size_t>(o * m.groups_per_row() + i / m.group)];
  return 0.0;
}

void dequantize(const QuantMatrix& m, float* out, bool transposed) {
  const int64_t R = m.rows, I = m.cols;
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < R; ++o) {
    for (int64_t i = 0; i < I; ++i) {
      const auto v = static_cast<float>(m.at(o, i));
      out[transposed ? i * R + o : o * I + i] = v;
    }
  }
}

void QuantMatrix::finish_int8() {
  row_sum.assign(static_cast<std::size_t>(rows), 0);
  for (int64_t o = 0; o < rows; ++o) {
    int32_t s = 0;
    for (int64_t i = 0; i < cols; ++i) s += q8[static_cast<std::size_t>(o * cols + i)];
    row_sum[static_cast<std::size_t>(o)] = s;
  }
}

float int8_scale(const float* row, int64_t n) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::abs(row[i]));
  return amax > 0.0f ? amax / 127.0f : 1.0f;
}

int8_t int8_code(float w, float scale) {
  return static_cast<int8_t>(std::clamp(std::nearbyint(w / scale), -127.0f, 127.0f));
}

Q4Grid q4_grid(const float* x, int64_t n) {
  float lo = x[0], hi = x[0];
  for (int64_t j = 1; j < n; ++j) lo = std::min(lo, x[j]), hi = std::max(hi, x[j]);
  return {hi > lo ? (hi - lo) / 15.0f : 1.0f, lo};
}

uint8_t q4_code(float w, Q4Grid g) {
  return static_cast<uint8_t>(std::clamp(std::nearbyint((w - g.offset) / g.scale), 0.0f, 15.0f));
}

void check_q4_group(int64_t rows, int64_t cols, int group) {
  TRI_CHECK(valid_group_size(group), "q4 group size {} is not supported; use --group-size 32, 64 or 128", group);
  TRI_CHECK(cols % group == 0,
            "q4 group size {} does not divide the matrix's {} inputs per row; choose a group size "
            "that divides every quantized row ({} x {})", group, cols, rows, cols);
}

void put_q4(QuantMatrix& m, int64_t o, int64_t i, uint8_t q) {
  const int64_t g = i / m.group, j = i % m.group, half = m.group / 2;
  uint8_t& byte = m.q4[static_cast<std::size_t>(o * m.cols / 2 + g * half + j % half)];
  byte = static_cast<uint8_t>(byte | (j < half ? q : q << 4));
}

QuantMatrix quantize(const float* w, int64_t rows, int64_t cols, Format format, int group) {
  QuantMatrix m;
  m.format = format, m.rows = rows, m.cols = cols;
  const auto n = static_cast<std::size_t>(rows * cols);
  if (format == Format::kFp32) {
    m.fp32.assign(w, w + n);
    return m;
  }
  if (format == Format::kInt8) {
    m.q8.resize(n);
    m.scale.resize(static_cast<std::size_t>(rows));
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < rows; ++o) {
      const float* row = w + o * cols;
      const float s = int8_scale(row, cols);
      m.scale[static_cast<std::size_t>(o)] = s;
      for (int64_t i = 0; i < cols; ++i) m.q8[static_cast<std::size_t>(o * cols + i)] = int8_code(row[i], s);
    }
    m.finish_int8();
    return m;
  }
  check_q4_group(rows, cols, group);
  m.group = group;
  const int64_t G = group, groups = cols / G;
  m.q4.assign(n / 2, 0);
  m.scale.resize(static_cast<std::size_t>(rows * groups));
  m.offset.resize(static_cast<std::size_t>(rows * groups));
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < rows; ++o) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* x = w + o * cols + g * G;
      const Q4Grid grid = q4_grid(x, G);
      const auto k = static_cast<std::size_t>(o * groups + g);
      m.scale[k] = grid.scale;
      m.offset[k] = grid.offset;
      for (int64_t j = 0; j < G; ++j) put_q4(m, o, g * G + j, q4_code(x[j], grid));
    }
  }
  return m;
}

}  // namespace trident::quant
