#include "ckpt/checksums.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include <fmt/format.h>

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

nlohmann::json recorded_checksums(const std::string& dir, const nlohmann::json& trident) {
  if (trident.is_object() && trident.contains(kChecksumsKey)) return trident[kChecksumsKey];
  std::ifstream in((std::filesystem::path(dir) / "config.json").string());
  if (!in) return nullptr;
  try {
    const nlohmann::json config = nlohmann::json::parse(in);
    if (config.is_object() && config.contains(kOutputChecksumsKey)) return config[kOutputChecksumsKey];
  } catch (const nlohmann::json::exception&) {
    // The loaders name a damaged config.json; here it records nothing.
  }
  return nullptr;
}

int verify_checksums(const std::string& dir, const nlohmann::json& trident,
                     std::span<const SafetensorsReader* const> read_by) {
  const bool step_dir = trident.is_object() && trident.contains(kChecksumsKey);
  const nlohmann::json sums = recorded_checksums(dir, trident);
  if (sums.is_null()) return 0;
  const std::string record = step_dir ? fmt::format("trident.json \"{}\"", kChecksumsKey)
                                      : fmt::format("config.json \"{}\"", kOutputChecksumsKey);
  // What to do about a damaged file: a step directory has siblings; an output is written again.
  const char* remedy = step_dir ? "Resume from another step directory, or copy this one again from where it was written"
                                : "Write it again (the `trident quantize`, `dequantize` or `merge-lora` that made it), "
                                  "or copy it again from where it was written";
  TRI_CHECK(sums.is_object(), "{}/{} must be an object of file names and \"crc32c:...\" values, got {}", dir, record,
            sums.dump());
  int checked = 0;
  for (const auto& [file, want] : sums.items()) {
    TRI_CHECK(want.is_string(), "{}/{}: checksum of {} must be a string such as \"crc32c:1a2b3c4d\", got {}",
              dir, record, file, want.dump());
    const std::string path = (std::filesystem::path(dir) / file).string();
    TRI_CHECK(std::filesystem::is_regular_file(path),
              "{} is missing: its {} records a checksum for it, so the checkpoint is incomplete. {}", path, record,
              remedy);
    const auto reader = std::find_if(read_by.begin(), read_by.end(), [&](const SafetensorsReader* r) {
      std::error_code ec;
      return r != nullptr && std::filesystem::equivalent(r->path(), path, ec);
    });
    const std::string got = crc32c_string(reader != read_by.end() ? (*reader)->file_crc32c() : file_crc32c(path));
    TRI_CHECK(got == want.get<std::string>(),
              "{} is corrupt: its checksum is {} but the checkpoint recorded {} when it wrote it, so its bytes "
              "changed since (a disk or copy error, or an edit). {}", path, got, want.get<std::string>(), remedy);
    ++checked;
  }
  return checked;
}

}  // namespace trident::ckpt
