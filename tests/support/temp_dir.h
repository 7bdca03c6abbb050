// A fresh directory under the system's temp directory (mkdtemp: unique even when tests run
// in parallel), removed with everything in it when the object goes. Shared by the unit tests.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>

namespace trident::test {

class TempDir {
 public:
  // <tmp>/<prefix>_XXXXXX.
  explicit TempDir(const std::string& prefix = "trident_test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "_XXXXXX")).string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // PATH/name.
  std::string sub(const std::string& name) const { return (std::filesystem::path(path_) / name).string(); }

 private:
  std::string path_;
};

}  // namespace trident::test
