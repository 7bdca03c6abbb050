// The send-progress probe: one sender at a time, so a receiver's spin never competes with
// another pair's for a core, and the verdict is about the transport alone.
#include "comm/progress_probe.h"

#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

namespace trident::comm {

namespace {
// Completed before the function returns, so they cannot meet a caller's later messages.
constexpr int kDataTag = 2;
constexpr int kPostedTag = 3;
constexpr int kVerdictTag = 4;
}  // namespace

bool sends_need_sender_progress(Communicator& group, const SendProgressProbeOptions& options) {
  const int P = group.size(), me = group.rank();
  if (P == 1) return false;
  using Clock = std::chrono::steady_clock;
  const auto hold = std::chrono::duration<double>(options.hold_s);
  std::vector<uint8_t> buffer(options.bytes);
  bool need = false;
  // With two ranks both directions are the same pair of sends (0 -> 1 and 1 -> 0).
  const std::vector<int> steps = P == 2 ? std::vector<int>{1} : std::vector<int>{1, -1};
  for (const int step : steps) {
    for (int sender = 0; sender < P; ++sender) {
      const int receiver = (sender + step + P) % P;
      Work data;
      if (me == receiver) data = group.recv(std::span<uint8_t>(buffer), sender, kDataTag);
      group.barrier().wait();
      if (me == sender) {
        Work send = group.send(std::span<const uint8_t>(buffer), receiver, kDataTag);
        // A small message goes out eagerly, in full, at once: it tells the receiver that
        // the large one is posted, so a late sender does not count against the transport.
        const uint8_t posted = 1;
        group.send(std::span<const uint8_t>(&posted, 1), receiver, kPostedTag).wait();
        std::this_thread::sleep_for(hold);  // outside MPI: nothing here moves the data
        int32_t slow = 0;
        group.recv(std::span<int32_t>(&slow, 1), receiver, kVerdictTag).wait();
        send.wait();
        need = need || slow != 0;
      } else if (me == receiver) {
        uint8_t posted = 0;
        group.recv(std::span<uint8_t>(&posted, 1), sender, kPostedTag).wait();
        const auto start = Clock::now();
        data.wait();
        const int32_t slow = Clock::now() - start > hold / 2 ? 1 : 0;
        group.send(std::span<const int32_t>(&slow, 1), sender, kVerdictTag).wait();
      }
    }
  }
  return need;
}

}  // namespace trident::comm
