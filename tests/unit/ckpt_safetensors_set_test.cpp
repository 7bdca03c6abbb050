// SafetensorsSet: a model directory's model.safetensors or HF index + shards read as one set;
// shards made by tests/ref/shard_safetensors.py (HF's splitting rule); one clear error per way
// an index and its shards can disagree.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "ckpt/safetensors.h"
#include "ckpt/safetensors_set.h"
#include "core/check.h"
#include "../support/expect_error.h"
#include "../support/temp_dir.h"

namespace fs = std::filesystem;
using namespace trident;
using namespace trident::ckpt;

namespace {

using trident::test::TempDir;

// Distinct, exactly representable values per tensor so a mix-up between tensors shows.
std::vector<float> values_for(const std::string& name, std::int64_t n) {
  std::vector<float> v(static_cast<std::size_t>(n));
  float base = 0;
  for (const char c : name) base += static_cast<float>(c);
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = base + 0.25f * static_cast<float>(i);
  return v;
}

using Entries = std::vector<std::pair<std::string, Shape>>;

void write_shard(const std::string& path, const Entries& entries) {
  std::vector<std::vector<float>> keep;
  keep.reserve(entries.size());
  SafetensorsWriter w;
  for (const auto& [name, shape] : entries) {
    keep.push_back(values_for(name, shape_numel(shape)));
    w.add_tensor(name, shape, keep.back().data());
  }
  w.write(path);
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// {"metadata": {...}, "weight_map": {name: file}} as HF writes it.
std::string index_json(const std::vector<std::pair<std::string, std::string>>& map, long total_size = -1) {
  std::string out = "{\n  \"metadata\": {";
  if (total_size >= 0) out += "\"total_size\": " + std::to_string(total_size);
  out += "},\n  \"weight_map\": {";
  for (std::size_t i = 0; i < map.size(); ++i) {
    out += (i ? ",\n    \"" : "\n    \"") + map[i].first + "\": \"" + map[i].second + "\"";
  }
  return out + "\n  }\n}\n";
}

constexpr const char* kShard1 = "model-00001-of-00002.safetensors";
constexpr const char* kShard2 = "model-00002-of-00002.safetensors";

// A valid two-shard directory: a, b in shard 1; c in shard 2.
void write_two_shards(const TempDir& dir) {
  write_shard(dir.sub(kShard1), {{"a", {2, 3}}, {"b", {4}}});
  write_shard(dir.sub(kShard2), {{"c", {3, 2}}});
  write_text(dir.sub(kSafetensorsIndexName), index_json({{"a", kShard1}, {"b", kShard1}, {"c", kShard2}}, 64));
}

std::string shard_tool() {
  return (fs::path(TRIDENT_SOURCE_DIR) / "tests" / "ref" / "shard_safetensors.py").string();
}

}  // namespace

TEST(CkptSafetensorsSet, SingleFileDirectory) {
  TempDir dir;
  write_shard(dir.sub("model.safetensors"), {{"x.weight", {3, 4}}, {"x.bias", {4}}});
  SafetensorsSet set(dir.path());
  EXPECT_FALSE(set.sharded());
  EXPECT_TRUE(set.index_path().empty());
  EXPECT_TRUE(set.warnings().empty());
  EXPECT_EQ(set.size(), 2u);
  EXPECT_TRUE(set.contains("x.bias"));
  EXPECT_FALSE(set.contains("x.scale"));
  EXPECT_EQ(set.info("x.weight").shape, (Shape{3, 4}));
  EXPECT_EQ(set.get("x.weight", {3, 4}), values_for("x.weight", 12));
  EXPECT_EQ(set.file_of("x.bias"), dir.sub("model.safetensors"));
  EXPECT_EQ(set.names(), (std::vector<std::string>{"x.weight", "x.bias"}));
}

TEST(CkptSafetensorsSet, TwoShardsReadAsOneSet) {
  TempDir dir;
  write_two_shards(dir);
  SafetensorsSet set(dir.path());
  EXPECT_TRUE(set.sharded());
  EXPECT_EQ(set.index_path(), dir.sub(kSafetensorsIndexName));
  EXPECT_TRUE(set.warnings().empty()) << set.warnings()[0];
  ASSERT_EQ(set.shards().size(), 2u);
  EXPECT_EQ(set.size(), 3u);
  EXPECT_EQ(set.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(set.file_of("a"), dir.sub(kShard1));
  EXPECT_EQ(set.file_of("c"), dir.sub(kShard2));
  EXPECT_EQ(set.get("a", {2, 3}), values_for("a", 6));
  EXPECT_EQ(set.get("c", {3, 2}), values_for("c", 6));
  std::vector<float> b(4);
  set.read("b", {4}, b.data());
  EXPECT_EQ(b, values_for("b", 4));
  EXPECT_EQ(set.raw("c").size(), 24u);
  const auto all = set.tensors();
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[2].name, "c");
  EXPECT_EQ(all[2].begin, 0u) << "offsets are relative to the tensor's own shard";
  // Errors from reading name the shard that holds the tensor, or the directory for a miss.
  EXPECT_ERROR_HAS(set.get("c", {2, 3}), "tensor 'c'", kShard2, "has shape [3, 2] but [2, 3] was expected");
  EXPECT_ERROR_HAS(set.info("cc"), "tensor 'cc' not found in", dir.path().c_str(), "3 tensors in 2 shards",
                   kSafetensorsIndexName, "close names: c");
}

// BF16 and F16 shards (as real Llama checkpoints ship) convert to fp32 on read, as the reader does.
TEST(CkptSafetensorsSet, HalfPrecisionShardsConvert) {
  TempDir dir;
  auto write_half = [&](const std::string& file, const std::string& name, const char* dtype,
                        std::vector<std::uint16_t> bits) {
    const std::string header = "{\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":[" +
                               std::to_string(bits.size()) + "],\"data_offsets\":[0," +
                               std::to_string(2 * bits.size()) + "]}}";
    std::ofstream out(dir.sub(file), std::ios::binary);
    const std::uint64_t n = header.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << header;
    out.write(reinterpret_cast<const char*>(bits.data()), static_cast<std::streamsize>(2 * bits.size()));
  };
  write_half(kShard1, "w.bf16", "BF16", {0x3F80, 0xC040, 0x3E20});  // 1, -3, 0.15625
  write_half(kShard2, "w.f16", "F16", {0x3C00, 0xC100, 0x0001});     // 1, -2.5, 2^-24
  write_text(dir.sub(kSafetensorsIndexName), index_json({{"w.bf16", kShard1}, {"w.f16", kShard2}}, 12));
  SafetensorsSet set(dir.path());
  EXPECT_EQ(set.info("w.bf16").dtype, DType::kBF16);
  EXPECT_EQ(set.get("w.bf16", {3}), (std::vector<float>{1.0f, -3.0f, 0.15625f}));
  EXPECT_EQ(set.get("w.f16", {3}), (std::vector<float>{1.0f, -2.5f, 0x1p-24f}));
  EXPECT_TRUE(set.warnings().empty());
}

// The Python tool splits as save_pretrained does: in order, a new shard when the limit would be
// exceeded, an oversized tensor in a shard of its own (before the shard still being filled).
TEST(CkptSafetensorsSet, ShardsWrittenByThePythonToolFollowHfSplitting) {
  if (!fs::exists("/usr/bin/python3")) GTEST_SKIP() << "/usr/bin/python3 not available";
  TempDir dir;
  // Bytes: a 24, b 40, c 8, big 100, e 16; limit 64 -> [a b] (64 fits exactly), big alone,
  // then [c e]: shard 2 is the oversized tensor, shard 3 the one it interrupted.
  const Entries entries = {{"a", {6}}, {"b", {2, 5}}, {"c", {2}}, {"big", {25}}, {"e", {4}}};
  write_shard(dir.sub("full.safetensors"), entries);
  const std::string out = dir.sub("sharded");
  const std::string cmd = "/usr/bin/python3 " + shard_tool() + " " + dir.sub("full.safetensors") + " " + out +
                          " --max-shard-size 64 > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  EXPECT_FALSE(fs::exists(fs::path(out) / "model.safetensors"));
  SafetensorsSet set(out);
  EXPECT_TRUE(set.warnings().empty()) << set.warnings()[0];  // total_size agrees too
  ASSERT_EQ(set.shards().size(), 3u);
  const auto shard = [&](int i) { return (fs::path(out) / fmt::format("model-0000{}-of-00003.safetensors", i)).string(); };
  EXPECT_EQ(set.file_of("a"), shard(1));
  EXPECT_EQ(set.file_of("b"), shard(1));
  EXPECT_EQ(set.file_of("big"), shard(2));
  EXPECT_EQ(set.file_of("c"), shard(3));
  EXPECT_EQ(set.file_of("e"), shard(3));
  for (const auto& [name, shape] : entries) {
    EXPECT_EQ(set.get(name, shape), values_for(name, shape_numel(shape))) << name;
  }
  // A limit that holds everything gives one model.safetensors and no index, as HF does.
  const std::string one = dir.sub("one");
  ASSERT_EQ(std::system(("/usr/bin/python3 " + shard_tool() + " " + dir.sub("full.safetensors") + " " + one +
                         " --max-shard-size 1KB > /dev/null").c_str()), 0);
  EXPECT_FALSE(fs::exists(fs::path(one) / kSafetensorsIndexName));
  SafetensorsSet single(one);
  EXPECT_FALSE(single.sharded());
  EXPECT_EQ(single.get("big", {25}), values_for("big", 25));
}

TEST(CkptSafetensorsSet, BothPresentUsesTheSingleFileAndWarns) {
  TempDir dir;
  write_two_shards(dir);
  write_shard(dir.sub("model.safetensors"), {{"only", {2}}});
  SafetensorsSet set(dir.path());
  EXPECT_FALSE(set.sharded());
  EXPECT_EQ(set.names(), std::vector<std::string>{"only"});
  ASSERT_EQ(set.warnings().size(), 1u);
  EXPECT_NE(set.warnings()[0].find("ignoring the index"), std::string::npos) << set.warnings()[0];
}

TEST(CkptSafetensorsSet, TotalSizeMismatchOnlyWarns) {
  TempDir dir;
  write_two_shards(dir);
  write_text(dir.sub(kSafetensorsIndexName), index_json({{"a", kShard1}, {"b", kShard1}, {"c", kShard2}}, 1000));
  SafetensorsSet set(dir.path());
  ASSERT_EQ(set.warnings().size(), 1u);
  EXPECT_NE(set.warnings()[0].find("total_size 1000 but its tensors hold 64 bytes"), std::string::npos)
      << set.warnings()[0];
  write_text(dir.sub(kSafetensorsIndexName),
             R"({"metadata": {"total_size": "64"}, "weight_map": {"a": ")" + std::string(kShard1) + "\"}}");
  EXPECT_ERROR_HAS(SafetensorsSet{dir.path()}, "metadata.total_size is \"64\", not a non-negative integer");
}

TEST(CkptSafetensorsSet, NoWeightsOrNoDirectoryIsClear) {
  TempDir dir;
  EXPECT_ERROR_HAS(SafetensorsSet{dir.path()}, "no weights in", dir.path().c_str(), "neither model.safetensors nor",
                   kSafetensorsIndexName);
  EXPECT_ERROR_HAS(SafetensorsSet{dir.sub("nope")}, "is not a directory");
}

TEST(CkptSafetensorsSet, MalformedIndexGivesSpecificErrors) {
  TempDir dir;
  write_two_shards(dir);
  const std::string index = dir.sub(kSafetensorsIndexName);
  auto open = [&] { SafetensorsSet set(dir.path()); };
  write_text(index, "{\"weight_map\": {\"a\": ");
  EXPECT_ERROR_HAS(open(), "malformed safetensors index", index.c_str(), "not valid JSON", "re-download");
  write_text(index, "[1, 2]");
  EXPECT_ERROR_HAS(open(), "malformed safetensors index", "top level is not a JSON object");
  write_text(index, R"({"metadata": {"total_size": 64}})");
  EXPECT_ERROR_HAS(open(), "malformed safetensors index", index.c_str(), "no \"weight_map\"");
  write_text(index, R"({"weight_map": ["a", "b"]})");
  EXPECT_ERROR_HAS(open(), "\"weight_map\" is not an object");
  write_text(index, R"({"weight_map": {}})");
  EXPECT_ERROR_HAS(open(), "\"weight_map\" lists no tensors");
  write_text(index, R"({"weight_map": {"a": 1}})");
  EXPECT_ERROR_HAS(open(), "the shard of tensor 'a' is 1, not a file name");
  write_text(index, R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})");
  EXPECT_ERROR_HAS(open(), "shards must be plain file names inside the model directory");
  write_text(index, R"({"metadata": [], "weight_map": {"a": "x"}})");
  EXPECT_ERROR_HAS(open(), "\"metadata\" is not an object");
}

TEST(CkptSafetensorsSet, MissingOrUnreadableShardNamesTheFile) {
  TempDir dir;
  write_two_shards(dir);
  fs::remove(dir.sub(kShard2));
  EXPECT_ERROR_HAS(SafetensorsSet{dir.path()}, "names shard 'model-00002-of-00002.safetensors'",
                   "for 1 tensor(s): 'c'", "does not exist", "fetch the missing shard");
  std::ofstream(dir.sub(kShard2), std::ios::binary) << "not a safetensors file at all";
  EXPECT_ERROR_HAS(SafetensorsSet{dir.path()}, "shard 'model-00002-of-00002.safetensors' named by",
                   kSafetensorsIndexName, "cannot be read", "corrupt safetensors header", "re-download that shard");
}

TEST(CkptSafetensorsSet, IndexAndShardsThatDisagreeAreErrors) {
  TempDir dir;
  write_two_shards(dir);
  const std::string index = dir.sub(kSafetensorsIndexName);
  auto open = [&] { SafetensorsSet set(dir.path()); };
  // The index lists a tensor no shard holds.
  write_text(index, index_json({{"a", kShard1}, {"b", kShard1}, {"c", kShard2}, {"bb", kShard1}}));
  EXPECT_ERROR_HAS(open(), "tensor 'bb' is listed in the safetensors index", "under shard 'model-00001-of-00002.safetensors'",
                   "no shard holds it", "has 2 tensors; close names: b", "different saves");
  // The index puts a tensor in the wrong shard.
  write_text(index, index_json({{"a", kShard1}, {"b", kShard2}, {"c", kShard2}}));
  EXPECT_ERROR_HAS(open(), "tensor 'b' is listed", "under shard 'model-00002-of-00002.safetensors'", "but it is in",
                   kShard1);
  // A shard holds a tensor the index does not list.
  write_text(index, index_json({{"a", kShard1}, {"c", kShard2}}));
  EXPECT_ERROR_HAS(open(), kShard1, "holds 1 tensor(s) the safetensors index", "does not list: 'b'",
                   "will not guess");
  // The same tensor in two shards.
  write_text(index, index_json({{"a", kShard1}, {"b", kShard1}, {"c", kShard2}}));
  write_shard(dir.sub(kShard2), {{"c", {3, 2}}, {"a", {2, 3}}});
  EXPECT_ERROR_HAS(open(), "tensor 'a' is in two shards", kShard1, kShard2, "says 'model-00001-of-00002",
                   "which copy is meant cannot be told");
}
