// io_uring-backed aligned file I/O (see async_file_io.h).
#include "core/async_file_io.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <unordered_map>
#include <vector>
#include <utility>

#include "core/check.h"
#include "core/memory.h"

namespace trident {

namespace {
constexpr unsigned kQueueDepth = 32;

std::string errno_text(int err) { return std::strerror(err); }

std::string dir_of(const std::string& path) {
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash);
}
}  // namespace

void AlignedFree::operator()(void* p) const { detail::free_zeroed(p, bytes); }

AlignedBytes aligned_bytes(std::size_t bytes) {
  std::size_t n = (bytes + AsyncFile::kAlignment - 1) / AsyncFile::kAlignment * AsyncFile::kAlignment;
  if (n == 0) n = AsyncFile::kAlignment;
  void* p = detail::allocate_zeroed(n, AsyncFile::kAlignment);
  if (!p) TRI_FAIL("out of memory allocating an I/O buffer of {}", format_bytes(static_cast<double>(n)));
  return AlignedBytes(static_cast<std::byte*>(p), AlignedFree{n});
}

struct AsyncFile::Ring {
  struct Request {
    bool write = false, done = false;
    std::byte* buf = nullptr;
    std::size_t bytes = 0, offset = 0;
    int error = 0;  // errno of a failed transfer
  };
  io_uring ring{};
  Ticket next = 1;
  unsigned in_flight = 0;
  std::unordered_map<Ticket, Request> requests;
};

AsyncFile::AsyncFile(const std::string& path, std::size_t bytes, std::string what)
    : path_(path), what_(std::move(what)), bytes_(bytes) {
  TRI_CHECK(bytes % kAlignment == 0, "{} size {} is not a multiple of {}", what_, bytes, kAlignment);
  // No O_TRUNC yet: the file may be a live run's, which the lock below finds out first.
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_DIRECT, 0600);
  direct_ = fd_ >= 0;
  // tmpfs (and some others) refuse O_DIRECT with EINVAL: buffered I/O then, said by direct().
  if (fd_ < 0 && errno == EINVAL) fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd_ < 0) {
    const int err = errno;
    TRI_FAIL("cannot create {} {}: {}; the directory {} must exist and be writable (pass another "
             "--offload-dir)", what_, path, errno_text(err), dir_of(path));
  }
  // An open-file-description lock, dropped by the kernel however this process ends: a second
  // live run on the same directory is refused instead of overwriting this one's state.
  struct flock lk {};
  lk.l_type = F_WRLCK;
  lk.l_whence = SEEK_SET;
  if (::fcntl(fd_, F_OFD_SETLK, &lk) != 0 && (errno == EAGAIN || errno == EACCES)) {
    ::close(fd_);
    fd_ = -1;
    TRI_FAIL("{} {} is in use by another live run (it holds the file's lock); give each run its "
             "own --offload-dir", what_, path);
  }
  if (::ftruncate(fd_, 0) != 0) {
    const int err = errno;
    ::close(fd_);
    TRI_FAIL("cannot truncate {} {}: {}", what_, path, errno_text(err));
  }
  // Room for the whole file now, so a full disk stops the run before its first step.
  struct statvfs vfs {};
  if (::fstatvfs(fd_, &vfs) == 0) {
    const double avail = static_cast<double>(vfs.f_bavail) * static_cast<double>(vfs.f_frsize);
    if (avail < static_cast<double>(bytes)) {
      ::close(fd_);
      ::unlink(path.c_str());
      TRI_FAIL("{} {} needs {} but its file system has only {} free; free some space or pass an "
               "--offload-dir on a larger disk", what_, path, format_bytes(static_cast<double>(bytes)),
               format_bytes(avail));
    }
  }
  // A file-size limit (ulimit -f) makes a write or fallocate past it raise SIGXFSZ, whose
  // default action kills the process with no message; ignored, the call fails with EFBIG and
  // becomes the clear error below (checkpoint writes past it fail the same way, their temp
  // files never renamed over a good checkpoint).
  ::signal(SIGXFSZ, SIG_IGN);
  if (bytes > 0 && ::fallocate(fd_, 0, 0, static_cast<off_t>(bytes)) != 0) {
    const int err = errno;
    if (err == EOPNOTSUPP || err == ENOSYS) {
      // No preallocation here: writes still report a full disk (submit_write's error).
      if (::ftruncate(fd_, static_cast<off_t>(bytes)) != 0) {
        const int e2 = errno;
        ::close(fd_);
        TRI_FAIL("cannot size {} {} to {}: {}", what_, path, bytes, errno_text(e2));
      }
    } else {
      ::close(fd_);
      ::unlink(path.c_str());
      TRI_FAIL("cannot allocate {} for {} {}: {}; {}", format_bytes(static_cast<double>(bytes)), what_, path,
               errno_text(err),
               err == EFBIG ? "the process's file-size limit (ulimit -f) is below it: raise the limit"
                            : "free some space or pass an --offload-dir on a larger disk");
    }
  }
  ring_ = std::make_unique<Ring>();
  if (const int rc = io_uring_queue_init(kQueueDepth, &ring_->ring, 0); rc < 0) {
    ring_.reset();
    ::close(fd_);
    TRI_FAIL("io_uring is not available ({}), which {} needs; on a kernel or container that "
             "forbids it run without --offload", errno_text(-rc), what_);
  }
}

AsyncFile::~AsyncFile() {
  if (ring_) {
    // Requests still in flight write into buffers their owner is about to free: finish them.
    while (ring_->in_flight > 0) {
      io_uring_cqe* cqe = nullptr;
      if (io_uring_wait_cqe(&ring_->ring, &cqe) != 0) break;
      io_uring_cqe_seen(&ring_->ring, cqe);
      --ring_->in_flight;
    }
    io_uring_queue_exit(&ring_->ring);
  }
  if (fd_ >= 0) ::close(fd_);
}

AsyncFile::Ticket AsyncFile::submit(bool write, void* buf, std::size_t bytes, std::size_t offset) {
  TRI_CHECK(reinterpret_cast<uintptr_t>(buf) % kAlignment == 0 && bytes % kAlignment == 0 &&
                offset % kAlignment == 0,
            "{}: unaligned request ({} bytes at offset {})", what_, bytes, offset);
  TRI_CHECK(offset + bytes <= bytes_, "{}: request [{}, {}) beyond the file's {} bytes", what_,
            offset, offset + bytes, bytes_);
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_->ring);
  while (!sqe) {  // the submission queue is full: make room
    io_uring_submit(&ring_->ring);
    reap_one();
    sqe = io_uring_get_sqe(&ring_->ring);
  }
  const Ticket t = ring_->next++;
  Ring::Request& r = ring_->requests[t];
  r.write = write;
  r.buf = static_cast<std::byte*>(buf);
  r.bytes = bytes;
  r.offset = offset;
  if (write) {
    io_uring_prep_write(sqe, fd_, buf, static_cast<unsigned>(bytes), offset);
  } else {
    io_uring_prep_read(sqe, fd_, buf, static_cast<unsigned>(bytes), offset);
  }
  io_uring_sqe_set_data64(sqe, t);
  const int rc = io_uring_submit(&ring_->ring);
  TRI_CHECK(rc >= 0, "{}: io_uring submit failed: {}", what_, errno_text(-rc));
  ++ring_->in_flight;
  return t;
}

AsyncFile::Ticket AsyncFile::submit_read(void* buf, std::size_t bytes, std::size_t offset) {
  return submit(false, buf, bytes, offset);
}

AsyncFile::Ticket AsyncFile::submit_write(const void* buf, std::size_t bytes, std::size_t offset) {
  return submit(true, const_cast<void*>(buf), bytes, offset);
}

void AsyncFile::reap_one() {
  io_uring_cqe* cqe = nullptr;
  const int rc = io_uring_wait_cqe(&ring_->ring, &cqe);
  TRI_CHECK(rc == 0, "{}: waiting for I/O failed: {}", what_, errno_text(-rc));
  const Ticket t = io_uring_cqe_get_data64(cqe);
  const int res = cqe->res;
  io_uring_cqe_seen(&ring_->ring, cqe);
  --ring_->in_flight;
  Ring::Request& r = ring_->requests.at(t);
  r.done = true;
  if (res < 0) {
    r.error = -res;
    return;
  }
  // A short transfer (rare on regular files): finish the rest synchronously.
  std::size_t done = static_cast<std::size_t>(res);
  while (done < r.bytes) {
    const ssize_t n = r.write ? ::pwrite(fd_, r.buf + done, r.bytes - done, static_cast<off_t>(r.offset + done))
                              : ::pread(fd_, r.buf + done, r.bytes - done, static_cast<off_t>(r.offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      r.error = n < 0 ? errno : EIO;
      return;
    }
    done += static_cast<std::size_t>(n);
  }
}

void AsyncFile::wait(Ticket t) {
  const auto start = std::chrono::steady_clock::now();
  auto it = ring_->requests.find(t);
  TRI_CHECK(it != ring_->requests.end(), "{}: unknown I/O ticket {}", what_, t);
  while (!it->second.done) {
    reap_one();
    it = ring_->requests.find(t);
  }
  wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const Ring::Request r = it->second;
  ring_->requests.erase(it);
  if (r.error == ENOSPC || r.error == EDQUOT) {
    TRI_FAIL("disk full while writing {} {} ({} at offset {}): {}; free space on that file "
             "system or pass an --offload-dir on a larger disk", what_, path_,
             format_bytes(static_cast<double>(r.bytes)), r.offset, errno_text(r.error));
  }
  TRI_CHECK(r.error == 0, "{} {} of {} at offset {} failed: {}", r.write ? "writing" : "reading",
            what_ + " " + path_, format_bytes(static_cast<double>(r.bytes)), r.offset, errno_text(r.error));
  (r.write ? bytes_written_ : bytes_read_) += static_cast<double>(r.bytes);
}

void AsyncFile::wait_all() {
  std::vector<Ticket> pending;
  for (const auto& [t, r] : ring_->requests) pending.push_back(t);
  std::sort(pending.begin(), pending.end());
  for (Ticket t : pending) wait(t);
}

}  // namespace trident
