// A progress bar for long data jobs: redrawn in place with \r when the stream is a terminal,
// otherwise one plain line per 10% so logs stay readable.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>

#include "core/timer.h"

namespace trident::data {

class ProgressBar {
 public:
  // total: units of work (bytes here); is_tty: draw in place. enabled = false prints nothing.
  ProgressBar(std::ostream& out, std::string label, int64_t total, bool is_tty, bool enabled = true);
  void update(int64_t done);
  void finish();  // draws 100% and ends the line

 private:
  void draw(int64_t done, bool final);
  std::ostream& out_;
  std::string label_;
  int64_t total_;
  bool tty_, enabled_, finished_ = false;
  int last_decile_ = -1;
  double last_draw_s_ = -1.0;
  Stopwatch clock_;
};

// Whether stderr is a terminal.
bool stderr_is_tty();

}  // namespace trident::data
