// Temp + fsync + rename for files and directories, with errors that say what happened to the
// previous version.
#include "ckpt/atomic_file.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/check.h"
#include "core/crc32c.h"

namespace fs = std::filesystem;

namespace trident::ckpt {
namespace {

constexpr std::size_t kBufferBytes = 4u << 20;

std::atomic<std::int64_t> g_fail_after{-1};
std::atomic<std::int64_t> g_written_total{0};
std::atomic<int> g_fail_errno{0};

std::string parent_dir(const std::string& path) {
  fs::path p(path);
  fs::path parent = p.parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

std::string describe_errno(int err) {
  if (err == ENOSPC) return "disk full (ENOSPC)";
  if (err == EDQUOT) return "disk quota exceeded (EDQUOT)";
  return fmt::format("{} (errno {})", std::strerror(err), err);
}

// write(2) that honours the test hook and retries short writes and EINTR; returns 0 or errno.
int write_all(int fd, const char* data, std::size_t bytes) {
  const std::int64_t limit = g_fail_after.load();
  if (limit >= 0) {
    const std::int64_t before = g_written_total.fetch_add(static_cast<std::int64_t>(bytes));
    if (before + static_cast<std::int64_t>(bytes) > limit) {
      // Write what would have fit, as a real full disk does, then fail.
      const std::int64_t room = std::max<std::int64_t>(0, limit - before);
      if (room > 0) (void)!::write(fd, data, static_cast<std::size_t>(room));
      return g_fail_errno.load();
    }
  }
  while (bytes > 0) {
    const ssize_t n = ::write(fd, data, bytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return ENOSPC;  // a zero-byte write on a regular file means no room
    data += n;
    bytes -= static_cast<std::size_t>(n);
  }
  return 0;
}

}  // namespace

namespace test_hooks {
void inject_write_failure(std::int64_t after_bytes, int err) {
  g_written_total.store(0);
  g_fail_errno.store(err);
  g_fail_after.store(after_bytes);
}
}  // namespace test_hooks

// ---------------------------------------------------------------------------------------------
AtomicFile::AtomicFile(std::string final_path) : final_path_(std::move(final_path)) {
  const fs::path p(final_path_);
  TRI_CHECK(!p.filename().empty(), "cannot write a file at '{}': the path names a directory",
            final_path_);
  const std::string dir = parent_dir(final_path_);
  temp_path_ = (fs::path(dir) / fmt::format(".{}.tmp-{}", p.filename().string(), ::getpid())).string();
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    const int err = errno;
    TRI_FAIL("cannot create '{}' (temporary file for '{}'): {}{}", temp_path_, final_path_,
             describe_errno(err),
             err == ENOENT ? "; does the directory exist?" : "");
  }
  buffer_.resize(kBufferBytes);
}

AtomicFile::~AtomicFile() { abort(); }

void AtomicFile::abort() noexcept {
  if (done_) return;
  done_ = true;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(temp_path_.c_str());
}

void AtomicFile::fail(const char* what, int err) {
  abort();
  if (err == ENOSPC || err == EDQUOT) {
    TRI_FAIL("{} while writing '{}'; it was not replaced, so the previous checkpoint (if any) "
             "is intact. Free some space (or point the checkpoint directory elsewhere) and retry",
             describe_errno(err), final_path_);
  }
  TRI_FAIL("{} failed for '{}' (temporary file '{}'): {}; '{}' was not replaced", what,
           final_path_, temp_path_, describe_errno(err), final_path_);
}

void AtomicFile::flush() {
  if (buffered_ == 0) return;
  const int err = write_all(fd_, buffer_.data(), buffered_);
  buffered_ = 0;
  if (err != 0) fail("write", err);
}

void AtomicFile::write(const void* data, std::size_t bytes) {
  TRI_CHECK(!done_, "write to '{}' after it was committed or aborted", final_path_);
  const char* src = static_cast<const char*>(data);
  bytes_written_ += bytes;
  crc_ = crc32c_update(crc_, data, bytes);
  if (buffered_ + bytes <= buffer_.size()) {
    std::memcpy(buffer_.data() + buffered_, src, bytes);
    buffered_ += bytes;
    return;
  }
  flush();
  if (bytes >= buffer_.size()) {
    const int err = write_all(fd_, src, bytes);
    if (err != 0) fail("write", err);
    return;
  }
  std::memcpy(buffer_.data(), src, bytes);
  buffered_ = bytes;
}

void AtomicFile::commit() {
  TRI_CHECK(!done_, "'{}' was already committed or aborted", final_path_);
  flush();
  if (::fsync(fd_) != 0) fail("fsync", errno);
  if (::close(fd_) != 0) {
    fd_ = -1;
    fail("close", errno);
  }
  fd_ = -1;
  if (::rename(temp_path_.c_str(), final_path_.c_str()) != 0) fail("rename", errno);
  done_ = true;
  fsync_directory(parent_dir(final_path_));
}

void write_file_atomic(const std::string& path, std::string_view contents) {
  AtomicFile file(path);
  file.write(contents);
  file.commit();
}

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  TRI_CHECK(fd >= 0, "cannot open directory '{}' to fsync it: {}", dir, std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  // Some file systems (e.g. certain network mounts) refuse fsync on directories; that is not
  // an error worth failing a checkpoint for.
  TRI_CHECK(rc == 0 || err == EINVAL || err == EROFS, "fsync of directory '{}' failed: {}", dir,
            std::strerror(err));
}

void require_new_output_dir(const std::string& dir, std::string_view flag) {
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  if (st.type() == fs::file_type::not_found) return;
  TRI_CHECK(!ec, "{} '{}': cannot inspect it ({}); give a new directory (nothing was written)", flag, dir,
            ec.message());
  TRI_CHECK(fs::is_directory(st), "{} '{}' exists and is not a directory; give a new directory (nothing was "
            "written)", flag, dir);
  const bool empty = fs::is_empty(dir, ec);
  TRI_CHECK(!ec, "{} '{}': cannot list it ({}); give a new directory (nothing was written)", flag, dir,
            ec.message());
  TRI_CHECK(empty, "{} '{}' exists and is not empty; give a new directory (nothing was written)", flag, dir);
}

StagedDirectory stage_new_output_dir(const std::string& dir, std::string_view flag) {
  require_new_output_dir(dir, flag);
  fs::path p = fs::path(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();  // "out/"
  TRI_CHECK(!p.filename().empty() && p.filename() != "." && p.filename() != "..",
            "{} '{}' does not name a directory to create; give a new directory", flag, dir);
  const fs::path root = p.has_parent_path() ? p.parent_path() : fs::path(".");
  return StagedDirectory(root.string(), p.filename().string());
}

void commit_new_output_dir(StagedDirectory& staged, std::string_view flag) {
  try {
    require_new_output_dir(staged.final_path(), flag);
  } catch (const Error& e) {
    staged.abort();
    TRI_FAIL("{} (it appeared while this command ran: was another run writing there?)", e.what());
  }
  staged.commit();
}

void remove_tree_quietly(const std::string& path) noexcept {
  std::error_code ec;
  fs::remove_all(path, ec);
}

// ---------------------------------------------------------------------------------------------
StagedDirectory::StagedDirectory(std::string root, std::string name) : root_(std::move(root)) {
  TRI_CHECK(!name.empty() && name.find('/') == std::string::npos,
            "staged directory name '{}' must be a single path component", name);
  std::error_code ec;
  fs::create_directories(root_, ec);
  TRI_CHECK(!ec, "cannot create checkpoint directory '{}': {}", root_, ec.message());
  staging_path_ = (fs::path(root_) / ("." + name + ".tmp")).string();
  final_path_ = (fs::path(root_) / name).string();
  remove_tree_quietly(staging_path_);  // left over by a crashed run
  if (::mkdir(staging_path_.c_str(), 0755) != 0) {
    const int err = errno;
    TRI_FAIL("cannot create staging directory '{}': {}", staging_path_, describe_errno(err));
  }
}

StagedDirectory::~StagedDirectory() { abort(); }

void StagedDirectory::abort() noexcept {
  if (done_) return;
  done_ = true;
  remove_tree_quietly(staging_path_);
}

void StagedDirectory::commit() {
  TRI_CHECK(!done_, "staged directory '{}' was already committed or aborted", final_path_);
  fsync_directory(staging_path_);
  std::error_code ec;
  if (fs::exists(final_path_, ec)) {
    // Swap atomically, so the final name never disappears, then drop the old contents.
    if (::renameat2(AT_FDCWD, staging_path_.c_str(), AT_FDCWD, final_path_.c_str(),
                    RENAME_EXCHANGE) == 0) {
      done_ = true;
      fsync_directory(root_);
      remove_tree_quietly(staging_path_);  // now holds the old directory
      return;
    }
    // No RENAME_EXCHANGE on this file system: move the old one aside first.
    const std::string aside = final_path_ + fmt::format(".old-{}", ::getpid());
    remove_tree_quietly(aside);
    if (::rename(final_path_.c_str(), aside.c_str()) != 0) {
      const int err = errno;
      abort();
      TRI_FAIL("cannot replace existing '{}': {}", final_path_, describe_errno(err));
    }
    if (::rename(staging_path_.c_str(), final_path_.c_str()) != 0) {
      const int err = errno;
      (void)::rename(aside.c_str(), final_path_.c_str());  // put the old one back
      abort();
      TRI_FAIL("cannot rename '{}' to '{}': {}", staging_path_, final_path_, describe_errno(err));
    }
    done_ = true;
    fsync_directory(root_);
    remove_tree_quietly(aside);
    return;
  }
  if (::rename(staging_path_.c_str(), final_path_.c_str()) != 0) {
    const int err = errno;
    abort();
    TRI_FAIL("cannot rename '{}' to '{}': {}", staging_path_, final_path_, describe_errno(err));
  }
  done_ = true;
  fsync_directory(root_);
}

}  // namespace trident::ckpt
