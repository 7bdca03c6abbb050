// The checkpoint directory lock (see dir_lock.h).
#include "ckpt/dir_lock.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "core/check.h"

namespace trident::ckpt {

namespace {

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// The owner recorded in the file; nullopt when it is empty (released cleanly, or its owner
// has not written it yet) or not ours to read.
std::optional<LockOwner> read_owner(int fd) {
  std::string text;
  char buf[512];
  off_t offset = 0;
  while (true) {
    const ssize_t n = ::pread(fd, buf, sizeof buf, offset);
    if (n <= 0) break;
    text.append(buf, static_cast<size_t>(n));
    offset += n;
  }
  if (text.empty()) return std::nullopt;
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    LockOwner o;
    o.host = j.at("host").get<std::string>();
    o.pid = j.at("pid").get<std::int64_t>();
    o.started = j.value("started", std::string("?"));
    return o;
  } catch (const nlohmann::json::exception&) {
    return LockOwner{"unknown", 0, fmt::format("unreadable lock file contents '{}'", text.substr(0, 80))};
  }
}

bool pid_alive(std::int64_t pid) {
  return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM);
}

}  // namespace

std::string LockOwner::describe() const {
  return fmt::format("pid {} on host {} (started {})", pid, host, started);
}

DirLock::DirLock(const std::string& root) {
  std::error_code ec;
  std::filesystem::create_directories(root, ec);
  TRI_CHECK(!ec, "cannot create checkpoint directory '{}': {}", root, ec.message());
  path_ = (std::filesystem::path(root) / kLockFile).string();
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  TRI_CHECK(fd_ >= 0, "cannot open the checkpoint directory's lock file '{}': {}", path_,
            std::strerror(errno));
  struct flock lock {};
  lock.l_type = F_WRLCK;
  lock.l_whence = SEEK_SET;  // l_start = l_len = 0: the whole file
  if (::fcntl(fd_, F_OFD_SETLK, &lock) != 0) {
    const int err = errno;
    if (err == EAGAIN || err == EACCES) {
      const std::optional<LockOwner> owner = read_owner(fd_);
      ::close(fd_);
      fd_ = -1;
      TRI_FAIL("checkpoint directory '{}' is in use by another run: {}. Two runs writing one "
               "directory would overwrite each other's checkpoints; wait for that run to end, stop "
               "it, or give this one another --ckpt-dir",
               root, owner ? owner->describe() : std::string("its details are not written yet"));
    }
    // ENOLCK, EINVAL: a file system without locks. Train anyway, but say what is not guarded.
    note_ = fmt::format("cannot lock '{}' ({}): this file system does not support locks, so a "
                        "second run on this directory would not be detected",
                        path_, std::strerror(err));
  }
  // Ours now. Details left in the file belong to an owner that died without releasing.
  if (const std::optional<LockOwner> previous = read_owner(fd_)) {
    const bool same_host = previous->host == host_name();
    std::string why = same_host && !pid_alive(previous->pid) ? "which is no longer running"
                      : same_host ? "which no longer holds the lock (its pid now names another process)"
                                  : "which no longer holds the lock";
    if (note_.empty()) {
      note_ = fmt::format("took over the checkpoint directory lock '{}' left by {}, {}", path_,
                          previous->describe(), why);
    }
  }
  const std::string me = nlohmann::json{{"host", host_name()}, {"pid", static_cast<std::int64_t>(::getpid())},
                                        {"started", utc_now()}}.dump() + "\n";
  const bool written = ::ftruncate(fd_, 0) == 0 &&
                       ::pwrite(fd_, me.data(), me.size(), 0) == static_cast<ssize_t>(me.size());
  TRI_CHECK(written, "cannot write the checkpoint directory's lock file '{}': {}", path_,
            std::strerror(errno));
}

DirLock::~DirLock() {
  if (fd_ < 0) return;
  // Emptied while still held: whoever locks it next sees a clean release, not a dead owner.
  if (::ftruncate(fd_, 0) != 0) {
    // Nothing to do: the next owner will report this process as a stale owner.
  }
  ::close(fd_);
}

}  // namespace trident::ckpt
