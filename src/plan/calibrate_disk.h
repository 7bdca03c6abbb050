// Calibrating the offload disk the way the engine uses it (optim/moment_store.h): a probe
// file under the --offload-dir, written then read sequentially through AsyncFile (io_uring,
// O_DIRECT where the file system takes it, so the page cache is out of the figure) in the
// store's requests (both moments of one block: 2 x --offload-block-kib), two requests in
// flight as the store keeps one read and one write going. The probe is tens of MiB, so it
// takes well under a second on a disk of ~1 GB/s, and it is removed afterwards, also when
// the measurement fails.
#pragma once

#include <cstddef>
#include <string>

#include "plan/cost_model.h"

namespace trident::plan {

struct DiskCalibration {
  DiskModel model;
  bool direct = true;        // false: the file system refused O_DIRECT (the page cache is in the figure)
  double probe_bytes = 0;    // moved each way
  double request_bytes = 0;  // per request
};

// Throws trident::Error naming the directory and the fix when `dir` is missing, not a
// directory or not writable, or when the probe cannot be written there (a full disk).
// probe_bytes is rounded up to whole requests (at least two).
DiskCalibration calibrate_disk(const std::string& dir, std::size_t request_bytes,
                               std::size_t probe_bytes = std::size_t{64} << 20);

}  // namespace trident::plan
