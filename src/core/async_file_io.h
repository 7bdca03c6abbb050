// A file read and written in large aligned blocks with asynchronous I/O (io_uring, through
// Debian's liburing): submit_read / submit_write queue a request and return at once, wait()
// blocks until that request is done. The kernel does the transfers while the caller computes,
// so no I/O thread is needed and no copy is made (O_DIRECT where the file system takes it,
// which keeps the page cache out of the measured bandwidth; tmpfs refuses O_DIRECT and then
// the file is opened buffered, said by direct()). Every request's buffer, length and offset
// must be multiples of kAlignment. The file is preallocated at open, so a disk without room
// fails there, before any training; a write that still finds the disk full (a file system
// without fallocate) is one clear error naming the file and the fix.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace trident {

class AsyncFile {
 public:
  static constexpr std::size_t kAlignment = 4096;

  // Creates (or truncates) `path` and preallocates `bytes` (a multiple of kAlignment).
  // `what` names the file's purpose in errors ("the optimizer offload file").
  AsyncFile(const std::string& path, std::size_t bytes, std::string what);
  ~AsyncFile();
  AsyncFile(const AsyncFile&) = delete;
  AsyncFile& operator=(const AsyncFile&) = delete;

  using Ticket = uint64_t;
  Ticket submit_read(void* buf, std::size_t bytes, std::size_t offset);
  Ticket submit_write(const void* buf, std::size_t bytes, std::size_t offset);
  // Blocks until the request is complete; throws trident::Error if it failed. Requests
  // complete in any order; each ticket is waited for exactly once.
  void wait(Ticket t);
  void wait_all();

  const std::string& path() const { return path_; }
  std::size_t size() const { return bytes_; }
  bool direct() const { return direct_; }
  // Totals since open: bytes moved each way and seconds spent blocked in wait() (the part of
  // the I/O that was not hidden behind the caller's work).
  double bytes_read() const { return bytes_read_; }
  double bytes_written() const { return bytes_written_; }
  double wait_seconds() const { return wait_s_; }

 private:
  struct Ring;
  Ticket submit(bool write, void* buf, std::size_t bytes, std::size_t offset);
  void reap_one();  // waits for one completion and records it

  std::string path_, what_;
  std::size_t bytes_ = 0;
  int fd_ = -1;
  bool direct_ = false;
  std::unique_ptr<Ring> ring_;
  double bytes_read_ = 0, bytes_written_ = 0, wait_s_ = 0;
};

namespace detail {
// Zeroed memory, mapped from the kernel from 1 MiB up (core/memory.cpp says why), else malloc'd
// with `alignment`; free_zeroed takes the size allocate_zeroed was given.
void* allocate_zeroed(std::size_t bytes, std::size_t alignment);
void free_zeroed(void* p, std::size_t bytes);
}  // namespace detail

// A kAlignment-aligned byte buffer for AsyncFile requests (zeroed).
struct AlignedFree {
  std::size_t bytes = 0;  // as allocated
  void operator()(void* p) const;
};
using AlignedBytes = std::unique_ptr<std::byte[], AlignedFree>;
AlignedBytes aligned_bytes(std::size_t bytes);

}  // namespace trident
