// A Hugging Face model directory's weights as one set of tensors: either DIR/model.safetensors,
// or DIR/model.safetensors.index.json ({"metadata": {"total_size": N}, "weight_map": {tensor:
// shard file}}) plus the shard files it names (model-0000N-of-0000M.safetensors), read through
// SafetensorsReader. Which tensors a model needs, and their shapes, are left to the caller.
//
// Rules (each violation throws one trident::Error naming the file and the fix):
//  - Neither model.safetensors nor the index in DIR: error.
//  - Both present: model.safetensors is used and the index ignored, with a warning. This is the
//    precedence transformers' from_pretrained applies, so Trident loads what HF would load from
//    the same directory (a stale index is what a re-save without sharding leaves behind).
//  - The index must be a JSON object with an object "weight_map" of string values naming plain
//    files inside DIR (no '/'), and list at least one tensor; "metadata" is optional.
//  - Every shard the index names must exist and be a valid safetensors file.
//  - Every tensor the index lists must be in the shard it names; a tensor in two shards is an
//    error (which copy is meant cannot be told).
//  - A shard holding a tensor the index does not list is an error, not a warning: save_pretrained
//    writes the index from the shards' contents, so a disagreement means files from two saves
//    got mixed (e.g. a shard overwritten by another model's file of the same name), and loading
//    anyway could silently mix two models' weights.
//  - metadata.total_size differing from the listed tensors' byte count is only a warning:
//    converters are known to write approximate totals, and nothing is read from it.
//
// All shards are opened in the constructor, not lazily: the whole set is validated before any
// weight is read (a broken 30th shard fails at startup, not an hour into loading), and opening
// costs one mmap plus a header parse per shard (the data pages are touched only when read).
#pragma once

#include <cstddef>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "ckpt/safetensors.h"

namespace trident::ckpt {

inline constexpr const char* kSingleSafetensorsName = "model.safetensors";
inline constexpr const char* kSafetensorsIndexName = "model.safetensors.index.json";

class SafetensorsSet {
 public:
  // Opens and validates the directory (see the rules above).
  explicit SafetensorsSet(const std::string& dir);

  const std::string& dir() const { return dir_; }
  bool sharded() const { return !index_path_.empty(); }
  const std::string& index_path() const { return index_path_; }  // empty when not sharded
  const std::vector<SafetensorsReader>& shards() const { return shards_; }  // sorted by file name
  // Things worth telling the user that did not stop the load (see the rules above).
  const std::vector<std::string>& warnings() const { return warnings_; }

  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  std::size_t size() const { return where_.size(); }
  // Every tensor: shard by shard (in file-name order), within a shard in file order.
  std::vector<TensorInfo> tensors() const;
  std::vector<std::string> names() const;

  // Throws "tensor 'x' not found in DIR (...); close names: ..." when missing. The offsets in
  // the result are relative to the data section of file_of(name).
  const TensorInfo& info(const std::string& name) const;
  // The path of the file holding `name` (for messages).
  const std::string& file_of(const std::string& name) const { return shard_of(name).path(); }

  // As SafetensorsReader::read/get/raw/read_range, on the shard holding `name`.
  void read(const std::string& name, const Shape& expected_shape, float* dst) const;
  std::vector<float> get(const std::string& name, const Shape& expected_shape) const;
  std::span<const std::byte> raw(const std::string& name) const;
  void read_range(const std::string& name, const Shape& expected_shape, std::int64_t begin, std::int64_t count,
                  float* dst) const;
  // bytes_read() over every shard.
  std::uint64_t bytes_read() const;
  // SafetensorsReader::checksum_reads() on every shard.
  void checksum_reads() const;

 private:
  void open_single(const std::string& path);
  void open_index(const std::string& path);
  const SafetensorsReader& shard_of(const std::string& name) const;

  std::string dir_;
  std::string index_path_;
  std::vector<SafetensorsReader> shards_;
  std::map<std::string, std::size_t> where_;  // tensor name -> index into shards_
  std::vector<std::string> warnings_;
};

}  // namespace trident::ckpt
