// Weight-only round-to-nearest quantization of one matrix, stored as [out, in] (one row per
// output channel, whatever the family's checkpoint layout):
//   int8: symmetric per output row, w = s_o * q, q in [-127, 127], s_o = max|w_o| / 127.
//   q4:   asymmetric per group of G consecutive inputs of a row, w = s_g * q + m_g, q in
//         [0, 15], m_g = min of the group, s_g = (max - min) / 15 (llama.cpp's Q4_1 shape).
//         Asymmetric because a group's weights are rarely centred on 0: min/max use all 16
//         levels on the group's actual range, so the step is range/15 instead of 2 max|w|/15;
//         the price is one more float per group (4 + 64/G bits per weight).
// Round-trip error of one weight: at most half a step (s/2) in both formats.
// Packing of q4: G/2 bytes per group; byte j holds input j of the group in its low nibble and
// input j + G/2 in its high nibble (so 16 bytes expand to two runs of 16 consecutive inputs).
// Kernels on these matrices: quant/quant_matmul.h. Which tensors get quantized: quant/quantize.h.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace trident::quant {

enum class Format { kFp32, kInt8, kQ4 };
std::string_view format_name(Format f);  // "fp32", "int8", "q4"
// "int8" | "q4" (and "fp32" when allow_fp32); anything else: an error listing the choices.
Format parse_format(std::string_view name, bool allow_fp32 = false);
// Group sizes q4 accepts (a multiple of 32 so a group is whole 16-byte vectors).
bool valid_group_size(int g);

struct QuantMatrix {
  Format format = Format::kFp32;
  int64_t rows = 0;  // output channels O
  int64_t cols = 0;  // inputs I
  int group = 0;     // q4: inputs per group
  std::vector<float> fp32;     // fp32: (O, I)
  std::vector<int8_t> q8;      // int8: (O, I)
  std::vector<uint8_t> q4;     // q4: (O, I/2) packed as above
  std::vector<float> scale;    // int8: (O); q4: (O, I/G)
  std::vector<float> offset;   // q4: (O, I/G) the group minimum m_g (the zero point, in weight units)
  std::vector<int32_t> row_sum;  // int8: (O) sum of q over the row (derived; the VNNI kernel's shift)

  int64_t groups_per_row() const { return group > 0 ? cols / group : 0; }
  // Bytes a matrix-vector product reads: the packed weights and their scales/offsets.
  int64_t weight_bytes() const;
  // Element (o, i) as the kernels see it, in double.
  double at(int64_t o, int64_t i) const;
  // Recomputes row_sum from q8 (after loading).
  void finish_int8();
};

// Bytes an O x I matrix takes packed as `format` (q4: `group` inputs per group): int8 1 per
// weight + a 4-byte scale per row; q4 half a byte per weight + a scale and an offset (4 bytes
// each) per group. What QuantMatrix::weight_bytes returns and the planner counts for a QLoRA base.
int64_t packed_matrix_bytes(Format format, int64_t rows, int64_t cols, int group);

// w (O, I) row-major [out, in]. Throws when a q4 group size does not divide I (naming it).
QuantMatrix quantize(const float* w, int64_t rows, int64_t cols, Format format, int group = 0);
// The matrix as fp32, every element rounded once from at(o, i) (s q, or s q + m, in double):
// the values QLoRA trains on (quant/packed_base.h) and `trident dequantize` writes, so a QLoRA
// run and a LoRA run on the dequantized checkpoint multiply the same fp32 weights bit for bit.
// out is [rows, cols] (nn.Linear), or [cols, rows] when `transposed` (Conv1D's [in, out]).
void dequantize(const QuantMatrix& m, float* out, bool transposed = false);

// The quantization step of row o at input i (s_o or s_g): the round-trip bound is step / 2.
double step_at(const QuantMatrix& m, int64_t o, int64_t i);

// The grids, one definition shared by round-to-nearest (quantize) and GPTQ (quant/gptq.h),
// so both write the same format with the same arithmetic:
// int8: the row's scale max|w| / 127 (1 for an all-zero row: any scale is exact) and a code.
float int8_scale(const float* row, int64_t n);
int8_t int8_code(float w, float scale);
// q4: a group's scale (max - min) / 15 (1 when constant) and offset (the minimum), and a code.
struct Q4Grid {
  float scale = 1.0f, offset = 0.0f;
};
Q4Grid q4_grid(const float* x, int64_t n);
uint8_t q4_code(float w, Q4Grid g);
// Throws unless group is a supported size dividing cols (the message names both).
void check_q4_group(int64_t rows, int64_t cols, int group);
// Stores code q (0..15) of element (o, i) into m.q4 (m.q4 zero-initialised; the packing above).
void put_q4(QuantMatrix& m, int64_t o, int64_t i, uint8_t q);

}  // namespace trident::quant
