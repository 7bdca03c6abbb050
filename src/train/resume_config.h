// The run configuration of `trident train --resume DIR`: the one the checkpoint's trident.json
// stores (model, data, optimizer, schedule, layout, ckpt_dir, metrics: every field), with the
// options given explicitly (flags or --config) applied over it. Loading the tensors is left to
// the trainer; this reads only trident.json and config.json.
#pragma once

#include <string>
#include <vector>

#include "train/run_config.h"

namespace trident::train {

struct ResumedConfig {
  RunConfig config;                // train.resume names the step directory itself
  std::vector<std::string> notes;  // for rank 0 to print: where it came from, each change
};

// `given` and `given_fields` as parse_run_config returns them; given.train.resume is set.
// Not restored, since they belong to one invocation: resume (the step directory found now),
// init_from (cleared) and stop_after (0 unless given). Throws trident::Error, naming the file
// and the field, for a trident.json that is missing, not JSON, or whose step (a non-negative
// integer equal to the directory's step) or run_config is malformed; and, naming the flag, for
// a change that cannot be honoured: the model's shape (--model, --n-layer, --n-head,
// --n-embd, --n-positions, --vocab-size), or a --seq-len beyond the model's positions.
// `world_size` is this launch's: a restored layout for another world size is refused with
// what to give instead.
ResumedConfig resume_run_config(const RunConfig& given, const FieldNames& given_fields, int world_size);

}  // namespace trident::train
