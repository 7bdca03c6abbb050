// Test helpers for Trident's user-facing errors: the message a call throws, and an
// expectation that it names every given fragment. Shared by the unit tests.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/check.h"

namespace trident::test {

// The message of the trident::Error `fn` throws; "<no error>" and a test failure when it
// throws none.
template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a trident::Error";
  return "<no error>";
}

}  // namespace trident::test

// EXPECT_ERROR_HAS(expr, "fragment", ...): expr throws a trident::Error whose message holds
// every fragment. TRIDENT_SHOW_ERRORS=1 prints the messages (to review their wording).
#define EXPECT_ERROR_HAS(expr, ...)                                                    \
  do {                                                                                 \
    const std::string msg_ = ::trident::test::error_of([&] { (void)(expr); });         \
    if (std::getenv("TRIDENT_SHOW_ERRORS")) std::printf("%s\n", msg_.c_str());         \
    for (const char* part : {__VA_ARGS__}) {                                           \
      EXPECT_NE(msg_.find(part), std::string::npos) << "missing '" << part << "' in: " \
                                                    << msg_;                           \
    }                                                                                  \
  } while (0)
