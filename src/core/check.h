// Errors with context: TRI_CHECK throws trident::Error carrying what was wrong, where, and a hint.
// Catching, printing once per rank and aborting the job is left to the CLI's main.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace trident {

// Every error Trident raises on purpose. The message is meant for the user: it says what was
// wrong and, where possible, what to do about it.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void throw_check_failure(const char* file, int line, const char* condition,
                                      const std::string& message);

}  // namespace trident

// TRI_CHECK(cond, "fmt {}", args...): throws trident::Error when cond is false.
#define TRI_CHECK(cond, ...)                                                              \
  do {                                                                                    \
    if (!(cond)) [[unlikely]] {                                                           \
      ::trident::throw_check_failure(__FILE__, __LINE__, #cond, ::fmt::format(__VA_ARGS__)); \
    }                                                                                     \
  } while (0)

// TRI_FAIL("fmt {}", args...): throws unconditionally.
#define TRI_FAIL(...) ::trident::throw_check_failure(__FILE__, __LINE__, nullptr, ::fmt::format(__VA_ARGS__))
