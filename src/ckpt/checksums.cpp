#include "ckpt/checksums.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "core/check.h"
#include "core/crc32c.h"

namespace trident::ckpt {

std::uint32_t file_crc32c(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    TRI_FAIL("cannot open '{}' to check its checksum: {}", path, std::strerror(err));
  }
  std::vector<char> block(4 << 20);
  std::uint32_t crc = 0;
  for (;;) {
    const ssize_t got = ::read(fd, block.data(), block.size());
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      const int err = errno;
      ::close(fd);
      TRI_FAIL("reading '{}' to check its checksum failed: {}", path, std::strerror(err));
    }
    if (got == 0) break;
    crc = crc32c_update(crc, block.data(), static_cast<std::size_t>(got));
  }
  ::close(fd);
  return crc;
}

int verify_checksums(const std::string& dir, const nlohmann::json& trident,
                     std::span<const SafetensorsReader* const> read_by) {
  if (!trident.is_object() || !trident.contains(kChecksumsKey)) return 0;
  const nlohmann::json& sums = trident[kChecksumsKey];
  TRI_CHECK(sums.is_object(), "{}/trident.json: \"{}\" must be an object of file names and \"crc32c:...\" values, "
            "got {}", dir, kChecksumsKey, sums.dump());
  int checked = 0;
  for (const auto& [file, want] : sums.items()) {
    TRI_CHECK(want.is_string(), "{}/trident.json: checksum of {} must be a string such as \"crc32c:1a2b3c4d\", got {}",
              dir, file, want.dump());
    const std::string path = (std::filesystem::path(dir) / file).string();
    TRI_CHECK(std::filesystem::is_regular_file(path),
              "{} is missing: its trident.json records a checksum for it, so the checkpoint is incomplete; "
              "use another step directory (or copy this one again)", path);
    const auto reader = std::find_if(read_by.begin(), read_by.end(), [&](const SafetensorsReader* r) {
      std::error_code ec;
      return r != nullptr && std::filesystem::equivalent(r->path(), path, ec);
    });
    const std::string got = crc32c_string(reader != read_by.end() ? (*reader)->file_crc32c() : file_crc32c(path));
    TRI_CHECK(got == want.get<std::string>(),
              "{} is corrupt: its checksum is {} but the checkpoint recorded {} when it wrote it, so its bytes "
              "changed since (a disk or copy error, or an edit). Resume from another step directory, or copy this "
              "one again from where it was written", path, got, want.get<std::string>());
    ++checked;
  }
  return checked;
}

}  // namespace trident::ckpt
