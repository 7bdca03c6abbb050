// Formats check failures: the user's message first, the source location last.
#include "core/check.h"

#include <cstring>

namespace trident {

void throw_check_failure(const char* file, int line, const char* condition,
                         const std::string& message) {
  const char* base = std::strrchr(file, '/');
  base = base ? base + 1 : file;
  std::string text = message;
  if (condition) {
    text += fmt::format(" [{}:{}: {}]", base, line, condition);
  } else {
    text += fmt::format(" [{}:{}]", base, line);
  }
  throw Error(text);
}

}  // namespace trident
