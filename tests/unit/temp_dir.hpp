// A uniquely named temporary directory for one test, removed with everything in it at scope end.
#pragma once

#include <filesystem>
#include <string>
#include <system_error>

#include "common/crypto.hpp"

namespace tocsin::test {

class TempDir {
 public:
  explicit TempDir(const std::string& tag = "unit")
      : path_(std::filesystem::temp_directory_path() /
              ("tocsin-" + tag + "-" + common::random_id(12))) {
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;  // best effort: a failed cleanup must not mask the test's own result
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

}  // namespace tocsin::test
