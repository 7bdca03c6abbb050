// The live progress line on stderr: rewritten in place (\r) when stderr is a terminal, one
// plain line per report otherwise (logs, CI).
#pragma once

#include <cstdint>
#include <string>

namespace trident::train {

class ProgressLine {
 public:
  explicit ProgressLine(bool enabled);
  // "step 12/200 | loss 5.1234 | lr 6.00e-04 | 3,412 tok/s | ETA 1m23s"
  void update(int64_t step, int64_t total, double loss, double lr, double tokens_per_s,
              double eta_s);
  // A line that must not be overwritten (eval results, checkpoint saved).
  void note(const std::string& text);
  void finish();

 private:
  bool enabled_;
  bool tty_;
  bool dirty_ = false;
};

std::string format_duration(double seconds);  // "1h02m", "3m05s", "12s"

}  // namespace trident::train
