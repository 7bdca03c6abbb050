// The offload disk's sequential O_DIRECT bandwidth (see calibrate_disk.h).
#include "plan/calibrate_disk.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <optional>

#include "core/async_file_io.h"
#include "core/check.h"
#include "core/timer.h"

namespace trident::plan {

DiskCalibration calibrate_disk(const std::string& dir, std::size_t request_bytes, std::size_t probe_bytes) {
  namespace fs = std::filesystem;
  std::error_code ec;
  TRI_CHECK(fs::exists(dir, ec), "--offload-dir {} does not exist; create it (on the local disk the run will "
            "offload to) or pass another directory", dir);
  TRI_CHECK(fs::is_directory(dir, ec), "--offload-dir {} is not a directory; pass the directory the run will "
            "offload to", dir);
  TRI_CHECK(::access(dir.c_str(), W_OK | X_OK) == 0, "--offload-dir {} is not writable by this user; pass a "
            "directory the run may create files in", dir);
  TRI_CHECK(request_bytes > 0 && request_bytes % AsyncFile::kAlignment == 0,
            "disk probe request of {} bytes is not a positive multiple of {} (direct I/O's alignment)",
            request_bytes, AsyncFile::kAlignment);
  const std::size_t requests = std::max<std::size_t>(2, (probe_bytes + request_bytes - 1) / request_bytes);
  const std::size_t bytes = requests * request_bytes;
  const std::string path = fmt::format("{}/trident-plan-disk-probe-{}.bin", dir, ::getpid());
  // Removed however this returns (AsyncFile creates it first thing, so unlink after a failed
  // open is harmless).
  struct Unlink {
    const std::string& p;
    ~Unlink() { ::unlink(p.c_str()); }
  } unlink_probe{path};
  DiskCalibration c;
  c.probe_bytes = static_cast<double>(bytes);
  c.request_bytes = static_cast<double>(request_bytes);
  std::optional<AsyncFile> file;
  file.emplace(path, bytes, "the disk bandwidth probe (trident plan --offload-dir)");
  c.direct = file->direct();
  AlignedBytes a = aligned_bytes(request_bytes), b = aligned_bytes(request_bytes);
  std::memset(a.get(), 1, request_bytes);
  std::memset(b.get(), 2, request_bytes);
  auto pass = [&](bool write) {
    Stopwatch sw;
    std::optional<AsyncFile::Ticket> pending[2];
    for (std::size_t i = 0; i < requests; ++i) {
      auto& slot = pending[i % 2];
      if (slot) file->wait(*slot);
      std::byte* buf = (i % 2 ? b : a).get();
      slot = write ? file->submit_write(buf, request_bytes, i * request_bytes)
                   : file->submit_read(buf, request_bytes, i * request_bytes);
    }
    for (auto& t : pending) {
      if (t) file->wait(*t);
    }
    return static_cast<double>(bytes) / std::max(sw.seconds(), 1e-9);
  };
  c.model.write_bandwidth = pass(true);
  c.model.read_bandwidth = pass(false);
  file.reset();
  return c;
}

}  // namespace trident::plan
