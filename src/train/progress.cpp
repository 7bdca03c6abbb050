// Progress line on stderr.
#include "train/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace trident::train {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const auto t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, (t % 3600) / 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

ProgressLine::ProgressLine(bool enabled) : enabled_(enabled), tty_(isatty(STDERR_FILENO) != 0) {}

void ProgressLine::update(int64_t step, int64_t total, double loss, double lr, double tps,
                          double eta_s) {
  if (!enabled_) return;
  const std::string line = fmt::format("step {}/{} | loss {:.4f} | lr {:.2e} | {:.0f} tok/s | ETA {}",
                                       step, total, loss, lr, tps, format_duration(eta_s));
  if (tty_) {
    fmt::print(stderr, "\r\033[K{}", line);
    dirty_ = true;
  } else {
    fmt::print(stderr, "{}\n", line);
  }
  std::fflush(stderr);
}

void ProgressLine::note(const std::string& text) {
  if (!enabled_) return;
  if (dirty_) fmt::print(stderr, "\n");
  dirty_ = false;
  fmt::print(stderr, "{}\n", text);
  std::fflush(stderr);
}

void ProgressLine::finish() {
  if (enabled_ && dirty_) fmt::print(stderr, "\n");
  dirty_ = false;
}

}  // namespace trident::train
