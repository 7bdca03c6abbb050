// The loss scaler in trident.json (see loss_scaler_state.h).
#include "train/loss_scaler_state.h"

#include <filesystem>

#include "core/check.h"

namespace trident::train {

void add_loss_scaler_state(const parallel::Engine& engine, nlohmann::json& run_state) {
  const optim::LossScaler* scaler = engine.loss_scaler();
  if (scaler == nullptr) return;
  const optim::LossScalerState& s = scaler->state();
  run_state["loss_scaler"] = {{"scale", s.scale},
                              {"growth_tracker", s.growth_tracker},
                              {"hysteresis_tracker", s.hysteresis_tracker}};
}

bool restore_loss_scaler_state(parallel::Engine& engine, const ckpt::LoadedCheckpoint& loaded) {
  if (engine.loss_scaler() == nullptr || !loaded.trident.is_object() || !loaded.trident.contains("loss_scaler")) {
    return false;
  }
  const std::string file = (std::filesystem::path(loaded.path) / ckpt::kTridentFile).string();
  const nlohmann::json& j = loaded.trident["loss_scaler"];
  auto field = [&](const char* name) -> const nlohmann::json& {
    TRI_CHECK(j.is_object() && j.contains(name) && j[name].is_number(),
              "{}: \"loss_scaler\".{} is missing or not a number; the checkpoint is damaged (resume "
              "from an earlier one, or pass --init-from to start a new run from its weights)", file, name);
    return j[name];
  };
  optim::LossScalerState s;
  s.scale = field("scale").get<double>();
  TRI_CHECK(field("growth_tracker").is_number_integer() && field("hysteresis_tracker").is_number_integer(),
            "{}: \"loss_scaler\" trackers must be integers; the checkpoint is damaged", file);
  s.growth_tracker = field("growth_tracker").get<int64_t>();
  s.hysteresis_tracker = field("hysteresis_tracker").get<int>();
  try {
    engine.restore_loss_scaler(s);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: \"loss_scaler\" cannot be restored: {}", file, e.what()));
  }
  return true;
}

}  // namespace trident::train
