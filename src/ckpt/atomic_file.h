// Crash-safe file and directory writing: temp name + fsync + rename (+ fsync of the parent), so a
// reader sees either the old complete file or the new complete one, never a partial one.
// What goes into the files is left to safetensors.h and checkpoint.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace trident::ckpt {

// A file written to DIR/.NAME.tmp-<pid> and renamed over DIR/NAME by commit(). Writes are
// buffered; every failure (ENOSPC: "disk full while writing X; the previous checkpoint is
// intact") throws trident::Error and removes the temporary file, so the final name never holds
// a partial file. Destroying an uncommitted AtomicFile removes the temporary file.
class AtomicFile {
 public:
  explicit AtomicFile(std::string final_path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t bytes);
  void write(std::string_view text) { write(text.data(), text.size()); }
  // Flush, fsync the file, rename it over the final name, fsync the directory.
  void commit();
  // Remove the temporary file (no-op once committed or aborted).
  void abort() noexcept;

  const std::string& final_path() const { return final_path_; }
  const std::string& temp_path() const { return temp_path_; }
  std::uint64_t bytes_written() const { return bytes_written_; }
  // CRC-32C of every byte written so far (core/crc32c.h): what the checkpoint records.
  std::uint32_t crc32c() const { return crc_; }

 private:
  void flush();
  [[noreturn]] void fail(const char* what, int err);

  std::string final_path_;
  std::string temp_path_;
  int fd_ = -1;
  bool done_ = false;
  std::vector<char> buffer_;
  std::size_t buffered_ = 0;
  std::uint64_t bytes_written_ = 0;
  std::uint32_t crc_ = 0;
};

// Writes `contents` to `path` atomically (AtomicFile in one call).
void write_file_atomic(const std::string& path, std::string_view contents);

// Refuses (trident::Error naming `flag`) an output directory that already holds something, so a
// command that writes a new model never mixes its files with an old one's: the path must be
// missing or an empty directory. Nothing is created.
void require_new_output_dir(const std::string& dir, std::string_view flag = "--out");

// fsync a directory so renames and creations inside it are durable.
void fsync_directory(const std::string& dir);

// Removes a file or a directory tree; missing paths are fine. Errors are ignored (best effort:
// used to clean up after a failure that is already being reported).
void remove_tree_quietly(const std::string& path) noexcept;

// A directory staged as ROOT/.NAME.tmp/ and renamed to ROOT/NAME by commit(). Files written
// into path() (normally through AtomicFile) only become visible under the final name together.
// An existing ROOT/NAME is replaced atomically (renameat2 RENAME_EXCHANGE where the file system
// supports it). The staging name has no pid, so several ranks can write into one staging
// directory on a shared file system; only one of them calls commit(). A stale staging
// directory left by a crash is removed when a new one with the same name is started.
// Destroying an uncommitted StagedDirectory removes the staging directory.
class StagedDirectory {
 public:
  StagedDirectory(std::string root, std::string name);
  ~StagedDirectory();
  StagedDirectory(const StagedDirectory&) = delete;
  StagedDirectory& operator=(const StagedDirectory&) = delete;

  const std::string& path() const { return staging_path_; }  // where to write the files
  const std::string& final_path() const { return final_path_; }
  // fsync the staging directory, rename it to the final name, fsync the root.
  void commit();
  void abort() noexcept;

 private:
  std::string root_;
  std::string staging_path_;
  std::string final_path_;
  bool done_ = false;
};

// A command's new output directory `dir` (a model written by quantize, dequantize or merge-lora):
// checked with require_new_output_dir, then staged beside it, so a command that is killed or
// fails leaves nothing under the name it was given; commit_new_output_dir makes the files
// appear there together.
StagedDirectory stage_new_output_dir(const std::string& dir, std::string_view flag = "--out");
// Re-checks that `dir` is still missing or empty (another run may have written it meanwhile:
// that is an error, not a silent replacement) and commits.
void commit_new_output_dir(StagedDirectory& staged, std::string_view flag = "--out");

namespace test_hooks {
// Test hook: make the AtomicFile write that would cross `after_bytes` total bytes (counted
// across all AtomicFiles from now on) fail with errno `err` (e.g. ENOSPC). -1 disables it.
void inject_write_failure(std::int64_t after_bytes, int err);
}  // namespace test_hooks

}  // namespace trident::ckpt
