// --recompute names.
#include "nn/recompute.h"

#include <cstddef>
#include <iterator>

#include "core/check.h"

namespace trident::nn {

namespace {
constexpr std::string_view kNames[] = {"none", "selective", "full"};
}  // namespace

std::span<const std::string_view> recompute_names() { return kNames; }

std::string_view recompute_name(Recompute r) { return kNames[static_cast<std::size_t>(r)]; }

Recompute parse_recompute(std::string_view name) {
  for (std::size_t i = 0; i < std::size(kNames); ++i) {
    if (name == kNames[i]) return static_cast<Recompute>(i);
  }
  TRI_FAIL("unknown --recompute '{}'; use none, selective or full", name);
}

}  // namespace trident::nn
