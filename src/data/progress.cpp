// Progress bar drawing; see progress.h.
#include "data/progress.h"

#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <ostream>

namespace trident::data {

bool stderr_is_tty() { return ::isatty(STDERR_FILENO) == 1; }

ProgressBar::ProgressBar(std::ostream& out, std::string label, int64_t total, bool is_tty, bool enabled)
    : out_(out), label_(std::move(label)), total_(std::max<int64_t>(total, 1)), tty_(is_tty), enabled_(enabled) {}

void ProgressBar::update(int64_t done) {
  if (!enabled_ || finished_) return;
  if (tty_) {
    const double now = clock_.seconds();
    if (last_draw_s_ >= 0 && now - last_draw_s_ < 0.1) return;  // at most 10 redraws a second
    last_draw_s_ = now;
    draw(done, false);
  } else {
    const int decile = static_cast<int>(std::min<int64_t>(done * 10 / total_, 10));
    if (decile > last_decile_ && decile < 10) {
      last_decile_ = decile;
      draw(done, false);
    }
  }
}

void ProgressBar::finish() {
  if (!enabled_ || finished_) return;
  draw(total_, true);
  finished_ = true;
}

void ProgressBar::draw(int64_t done, bool final) {
  constexpr int kWidth = 30;
  const double frac = std::clamp(static_cast<double>(done) / static_cast<double>(total_), 0.0, 1.0);
  const double secs = clock_.seconds();
  const double mb = static_cast<double>(done) / 1e6;
  const double rate = secs > 0 ? mb / secs : 0.0;
  const int filled = static_cast<int>(frac * kWidth);
  std::string line = fmt::format("{} [{}{}] {:3.0f}% {:.1f}/{:.1f} MB {:.1f} MB/s", label_, std::string(filled, '#'),
                                 std::string(kWidth - filled, ' '), frac * 100, mb,
                                 static_cast<double>(total_) / 1e6, rate);
  if (!final && rate > 0) line += fmt::format(" ETA {:.0f}s", (static_cast<double>(total_) / 1e6 - mb) / rate);
  if (final) line += fmt::format(" in {:.1f}s", secs);
  if (tty_) {
    out_ << '\r' << line << "\x1b[K" << (final ? "\n" : "") << std::flush;
  } else {
    out_ << line << '\n' << std::flush;
  }
}

}  // namespace trident::data
