// NodeMajorWorld: regrouping the launcher's ranks by node (Communicator::split_node + split), over
// any backend.
#include "comm/node_order.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <set>

#include "core/check.h"

namespace trident::comm {

std::vector<int> node_major_order(const std::vector<int>& leader) {
  std::vector<int> order(leader.size());
  std::iota(order.begin(), order.end(), 0);
  // Stable: inside a node the launcher's order stays; nodes come in order of their lowest rank.
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return leader[a] < leader[b]; });
  return order;
}

namespace {

// "0-3" for a contiguous run, "0,2,4" otherwise.
std::string rank_list(const std::vector<int>& r) {
  if (r.size() > 1 && r.back() - r.front() + 1 == static_cast<int>(r.size())) {
    return fmt::format("{}-{}", r.front(), r.back());
  }
  return fmt::format("{}", fmt::join(r, ","));
}

}  // namespace

std::string describe_placement(const std::vector<int>& node_of, const std::vector<std::string>& names,
                               const std::vector<int>& order, int tp) {
  if (names.size() <= 1) return "";
  std::vector<std::vector<int>> mesh(names.size()), launcher(names.size());
  for (size_t m = 0; m < node_of.size(); ++m) {
    mesh[node_of[m]].push_back(static_cast<int>(m));
    launcher[node_of[m]].push_back(order[m]);
  }
  bool moved = false;
  for (size_t m = 0; m < order.size(); ++m) moved = moved || order[m] != static_cast<int>(m);
  std::vector<std::string> parts;
  for (size_t n = 0; n < names.size(); ++n) {
    parts.push_back(fmt::format("{}: ranks {}{}", names[n], rank_list(mesh[n]),
                                moved ? fmt::format(" (launcher ranks {})", rank_list(launcher[n])) : ""));
  }
  std::string out = fmt::format("nodes: {} ({})\n", names.size(), fmt::join(parts, "; "));
  for (size_t first = 0; first + tp <= node_of.size(); first += tp) {
    std::set<std::string> spanned;
    for (size_t m = first; m < first + tp; ++m) spanned.insert(names[node_of[m]]);
    if (spanned.size() > 1) {
      out += fmt::format("warning: tp group of ranks {}-{} spans nodes {}, so its traffic crosses the "
                         "network; launch a multiple of --tp ({}) ranks on every node\n",
                         first, first + tp - 1, fmt::join(spanned, ", "), tp);
    }
  }
  return out;
}

NodeMajorWorld::NodeMajorWorld(Communicator& launcher, std::string world_name, CommOptions options) {
  const int rank = launcher.rank(), size = launcher.size();
  int32_t leader = rank;  // the lowest launcher rank on this rank's node
  launcher.split_node("node")->allreduce(std::span<int32_t>(&leader, 1), ReduceOp::kMin).wait();
  std::vector<int32_t> leaders(static_cast<size_t>(size));
  launcher.all_gather(std::span<const int32_t>(&leader, 1), std::span<int32_t>(leaders)).wait();

  order_ = node_major_order(std::vector<int>(leaders.begin(), leaders.end()));
  const int mesh_rank = static_cast<int>(std::find(order_.begin(), order_.end(), rank) - order_.begin());
  world_ = launcher.split(0, mesh_rank, std::move(world_name));
  world_->set_timeout(options.timeout_s);
  world_->set_debug(options.debug);
  world_->set_timeout_action(options.on_timeout);

  // Node index per mesh rank, and each node's name (the node name of its first rank).
  constexpr size_t kNameBytes = 256;
  std::string mine = launcher.node_name();
  mine.resize(kNameBytes - 1);  // truncated or padded with NULs; the last byte stays NUL
  std::vector<uint8_t> own(kNameBytes, 0), all(static_cast<size_t>(size) * kNameBytes);
  std::copy(mine.begin(), mine.end(), own.begin());
  world_->all_gather(std::span<const uint8_t>(own), std::span<uint8_t>(all)).wait();
  std::map<int, int> index_of_leader;
  node_of_.resize(size);
  for (int m = 0; m < size; ++m) {
    auto [it, fresh] = index_of_leader.emplace(leaders[order_[m]], static_cast<int>(index_of_leader.size()));
    if (fresh) {
      std::string n(reinterpret_cast<const char*>(&all[static_cast<size_t>(m) * kNameBytes]));
      // Two nodes reporting one host name (network namespaces without their own hostname):
      // keep them apart in messages.
      if (std::find(names_.begin(), names_.end(), n) != names_.end()) n += fmt::format("#{}", it->second);
      names_.push_back(n);
    }
    node_of_[m] = it->second;
  }
  nodes_ = static_cast<int>(names_.size());
}

NodeMajorWorld::~NodeMajorWorld() = default;

std::unique_ptr<Communicator> NodeMajorWorld::take_world() {
  TRI_CHECK(world_ != nullptr, "NodeMajorWorld::take_world called twice");
  return std::move(world_);
}

}  // namespace trident::comm
