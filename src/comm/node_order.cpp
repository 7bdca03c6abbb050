// NodeMajorWorld: regrouping the launcher's ranks by node (MPI_Comm_split_type + MPI_Comm_split).
#include "comm/node_order.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <set>

#include <mpi.h>

#include "comm/mpi_backend.h"
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
  MPI_Comm world = mpi_comm_of(launcher);
  int rank = 0, size = 1;
  MPI_Comm_rank(world, &rank);
  MPI_Comm_size(world, &size);
  MPI_Comm local = MPI_COMM_NULL;
  int rc = MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local);
  TRI_CHECK(rc == MPI_SUCCESS, "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) failed (code {})", rc);
  int leader = rank;
  MPI_Allreduce(MPI_IN_PLACE, &leader, 1, MPI_INT, MPI_MIN, local);
  MPI_Comm_free(&local);
  std::vector<int> leaders(size);
  MPI_Allgather(&leader, 1, MPI_INT, leaders.data(), 1, MPI_INT, world);

  order_ = node_major_order(leaders);
  const int mesh_rank = static_cast<int>(std::find(order_.begin(), order_.end(), rank) - order_.begin());
  MPI_Comm comm = MPI_COMM_NULL;
  rc = MPI_Comm_split(world, 0, mesh_rank, &comm);
  TRI_CHECK(rc == MPI_SUCCESS, "MPI_Comm_split regrouping the ranks by node failed (code {})", rc);

  // Node index per mesh rank, and each node's name (processor name of its first rank).
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  MPI_Get_processor_name(name, &len);
  std::vector<char> all(static_cast<size_t>(size) * MPI_MAX_PROCESSOR_NAME);
  MPI_Allgather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all.data(), MPI_MAX_PROCESSOR_NAME, MPI_CHAR, comm);
  world_ = make_mpi_communicator(comm, std::move(world_name), options);
  MPI_Comm_free(&comm);  // the Communicator holds its own duplicate
  std::map<int, int> index_of_leader;
  node_of_.resize(size);
  for (int m = 0; m < size; ++m) {
    auto [it, fresh] = index_of_leader.emplace(leaders[order_[m]], static_cast<int>(index_of_leader.size()));
    if (fresh) {
      std::string n(&all[static_cast<size_t>(m) * MPI_MAX_PROCESSOR_NAME]);
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
