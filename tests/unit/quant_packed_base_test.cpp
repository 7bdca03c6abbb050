// QLoRA's packed base (quant/packed_base.h): a tp rank's slice of a packed matrix dequantizes to
// exactly that rank's slice of the dequantized full matrix (bitwise: the same elements, each
// rounded once by quant::dequantize), for output splits (rows, with q|k|v-style sections and
// Conv1D's [in, out]) and input splits (whole q4 groups; int8 any columns); a split that cuts a
// q4 group is one clear error; PackedBase dequantizes a group into the scratch and points the
// ParameterSet there, in registration order (so a fused run stays one matrix).
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "core/check.h"
#include "nn/param_decl.h"
#include "quant/packed_base.h"
#include "quant/quant_format.h"

namespace trident::quant {
namespace {

std::vector<float> random_matrix(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  std::vector<float> w(static_cast<std::size_t>(n));
  for (float& x : w) x = dist(rng);
  return w;
}

// The dequantized full matrix in the declared layout, then this rank's slice of it, as the fp32
// LoRA run would hold it.
std::vector<float> expected_slice(const QuantMatrix& full, const nn::ParamInfo& info, bool in_out) {
  std::vector<float> logical(static_cast<std::size_t>(full.rows * full.cols));
  dequantize(full, logical.data(), in_out);
  std::vector<float> local(static_cast<std::size_t>(shape_numel(info.local_shape)));
  nn::scatter_logical_to_local(info, logical.data(), local.data());
  return local;
}

std::vector<float> got_slice(const QuantMatrix& full, const nn::ParamInfo& info, bool in_out) {
  const QuantMatrix m = slice_for_shard(full, info, in_out);
  std::vector<float> local(static_cast<std::size_t>(shape_numel(info.local_shape)));
  EXPECT_EQ(m.rows * m.cols, static_cast<int64_t>(local.size()));
  dequantize(m, local.data(), in_out);
  return local;
}

nn::ParamInfo shard(const nn::ParamDecl& d, int rank, int tp) {
  nn::ParamInfo info = nn::shard_for_tp(d, nn::ModelConfig{}, rank, tp);
  info.local_shape = nn::local_shape_of(info.logical_shape, info.shard);
  return info;
}

TEST(PackedBase, SlicesDequantizeToTheFullMatrixsSlices) {
  const int64_t O = 96, I = 128;
  const std::vector<float> w = random_matrix(O * I, 7);  // [out, in]
  for (const Format f : {Format::kQ4, Format::kInt8}) {
    const QuantMatrix full = quantize(w.data(), O, I, f, f == Format::kQ4 ? 32 : 0);
    // nn.Linear [out, in]: outputs split in 3 sections (q|k|v), then inputs split (o_proj).
    const nn::ParamDecl col{.name = "col.weight", .shape = {O, I}, .split = nn::TpSplit::kSplit, .dim = 0,
                            .sections = 3, .matmul = true};
    const nn::ParamDecl row{.name = "row.weight", .shape = {O, I}, .split = nn::TpSplit::kSplit, .dim = 1,
                            .matmul = true};
    // Conv1D [in, out]: outputs are dim 1 (c_attn), inputs dim 0 (c_proj).
    const nn::ParamDecl conv_col{.name = "cc.weight", .shape = {I, O}, .split = nn::TpSplit::kSplit, .dim = 1,
                                 .matmul = true, .in_out = true};
    const nn::ParamDecl conv_row{.name = "cr.weight", .shape = {I, O}, .split = nn::TpSplit::kSplit, .dim = 0,
                                 .matmul = true, .in_out = true};
    for (const nn::ParamDecl* d : {&col, &row, &conv_col, &conv_row}) {
      for (int tp : {1, 2, 4}) {
        for (int r = 0; r < tp; ++r) {
          const nn::ParamInfo info = shard(*d, r, tp);
          EXPECT_EQ(got_slice(full, info, d->in_out), expected_slice(full, info, d->in_out))
              << format_name(f) << " " << d->name << " rank " << r << " of " << tp;
        }
      }
    }
  }
}

TEST(PackedBase, AnInputSplitThatCutsAQ4GroupIsAnError) {
  const int64_t O = 8, I = 64;
  const std::vector<float> w = random_matrix(O * I, 3);
  const nn::ParamDecl row{.name = "h.0.attn.c_proj.weight", .shape = {I, O}, .split = nn::TpSplit::kSplit,
                          .dim = 0, .matmul = true, .in_out = true};
  const QuantMatrix q4 = quantize(w.data(), O, I, Format::kQ4, 32);
  EXPECT_NO_THROW(slice_for_shard(q4, shard(row, 1, 2), true));  // 32 inputs per rank: one group
  try {
    slice_for_shard(q4, shard(row, 1, 4), true);  // 16 per rank: half a group
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("straddle the tensor-parallel split"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("h.0.attn.c_proj.weight"), std::string::npos) << e.what();
  }
  const QuantMatrix q8 = quantize(w.data(), O, I, Format::kInt8);
  EXPECT_NO_THROW(slice_for_shard(q8, shard(row, 3, 4), true));  // int8: a scale per row, any columns
}

TEST(PackedBase, DequantizesAGroupInRegistrationOrderAndTracksPackedBytes) {
  const int64_t O = 16, I = 64;
  nn::ParameterSet ps;
  ps.begin_group("layer.0");
  std::vector<nn::ParamDecl> decls;
  for (const char* n : {"q.weight", "k.weight"}) {
    decls.push_back({.name = n, .shape = {O, I}, .matmul = true});
    nn::ParamInfo info = nn::shard_for_tp(decls.back(), nn::ModelConfig{}, 0, 1);
    info.frozen = info.packed = true;
    ps.add(info);
  }
  nn::ParamInfo norm;
  norm.name = "norm.weight";
  norm.logical_shape = {I};
  ps.add(norm);
  MemoryTracker tracker;
  ps.allocate(tracker);
  EXPECT_EQ(ps.total_numel(), I);  // only the norm is in the flat buffers
  PackedBase base(ps, tracker);
  std::vector<QuantMatrix> full;
  for (std::size_t k = 0; k < decls.size(); ++k) {
    const std::vector<float> w = random_matrix(O * I, 11 + static_cast<uint32_t>(k));
    full.push_back(quantize(w.data(), O, I, Format::kQ4, 32));
    base.load(decls[k], full.back());
  }
  base.check_complete();
  EXPECT_EQ(tracker.current(MemCategory::kPackedBase), static_cast<std::size_t>(2 * full[0].weight_bytes()));
  base.before_group_forward(0);
  ASSERT_NE(ps.data(0), nullptr);
  EXPECT_EQ(ps.data(1), ps.data(0) + O * I);  // adjacent: a fused q|k run is one matrix
  for (int id = 0; id < 2; ++id) {
    std::vector<float> want(static_cast<std::size_t>(O * I));
    dequantize(full[static_cast<std::size_t>(id)], want.data());
    EXPECT_EQ(std::vector<float>(ps.data(id), ps.data(id) + O * I), want);
  }
}

TEST(PackedBase, AMissingMatrixIsAnError) {
  nn::ParameterSet ps;
  ps.begin_group("layer.0");
  const nn::ParamDecl d{.name = "q.weight", .shape = {8, 32}, .matmul = true};
  nn::ParamInfo info = nn::shard_for_tp(d, nn::ModelConfig{}, 0, 1);
  info.frozen = info.packed = true;
  ps.add(info);
  MemoryTracker tracker;
  ps.allocate(tracker);
  PackedBase base(ps, tracker);
  EXPECT_THROW(base.check_complete(), Error);
}

}  // namespace
}  // namespace trident::quant
