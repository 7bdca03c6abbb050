// Mesh: rank <-> coordinates over a list of named dimensions, and group creation with
// Communicator::split (see mesh.h).
#include "comm/mesh.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/check.h"

namespace trident::comm {

namespace {

std::vector<MeshDim> trident_dims(int pp, int dp, int tp, int ep) {
  TRI_CHECK(pp >= 1 && dp >= 1 && tp >= 1, "parallel sizes must be >= 1, got dp({}) tp({}) pp({})", dp, tp, pp);
  TRI_CHECK(ep >= 1 && dp % ep == 0,
            "ep {} does not divide dp {}: expert parallelism splits each group of ep data-parallel "
            "ranks' experts between them; choose an ep that divides dp",
            ep, dp);
  return {{std::string(kPp), pp}, {std::string(kEdp), dp / ep}, {std::string(kEp), ep}, {std::string(kTp), tp}};
}

}  // namespace

MeshShape::MeshShape(int pp, int dp, int tp, int ep)
    : MeshShape(trident_dims(pp, dp, tp, ep), {{std::string(kDp), {std::string(kEdp), std::string(kEp)}}}) {}

MeshShape::MeshShape(std::vector<MeshDim> dims, std::vector<MeshGroup> compound) : dims_(std::move(dims)) {
  TRI_CHECK(!dims_.empty(), "a mesh needs at least one dimension");
  for (const MeshDim& d : dims_) {
    TRI_CHECK(d.size >= 1, "mesh dimension {} has size {}; every dimension needs size >= 1", d.name, d.size);
    groups_.push_back({d.name, {d.name}});
  }
  for (MeshGroup& g : compound) {
    TRI_CHECK(!g.dims.empty(), "mesh group {} names no dimension", g.name);
    int last = -1;
    for (const std::string& d : g.dims) {
      const int i = dim_index(d);
      TRI_CHECK(i > last, "mesh group {}: its dimensions must be distinct and in the mesh's order ({})", g.name,
                describe());
      last = i;
    }
    groups_.push_back(std::move(g));
  }
  for (std::size_t i = 0; i < groups_.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j) {
      TRI_CHECK(groups_[i].name != groups_[j].name, "mesh name {} is declared twice", groups_[i].name);
    }
  }
}

int MeshShape::dim_index(std::string_view name) const {
  for (std::size_t i = 0; i < dims_.size(); ++i) {
    if (dims_[i].name == name) return static_cast<int>(i);
  }
  throw Error(fmt::format("the mesh has no dimension {} (it has {})", name, describe()));
}

const MeshGroup& MeshShape::group(std::string_view name) const {
  for (const MeshGroup& g : groups_) {
    if (g.name == name) return g;
  }
  std::string names;
  for (const MeshGroup& g : groups_) names += (names.empty() ? "" : ", ") + g.name;
  throw Error(fmt::format("the mesh has no group {} (it has {})", name, names));
}

std::vector<bool> MeshShape::mask(const MeshGroup& g) const {
  std::vector<bool> in(dims_.size(), false);
  for (const std::string& d : g.dims) in[static_cast<std::size_t>(dim_index(d))] = true;
  return in;
}

int MeshShape::size(std::string_view name) const {
  int n = 1;
  for (const std::string& d : group(name).dims) n *= dims_[static_cast<std::size_t>(dim_index(d))].size;
  return n;
}

int MeshShape::world() const {
  int n = 1;
  for (const MeshDim& d : dims_) n *= d.size;
  return n;
}

std::vector<int> MeshShape::coords(int rank) const {
  std::vector<int> c(dims_.size());
  for (std::size_t i = dims_.size(); i-- > 0;) {  // the last dimension varies fastest
    c[i] = rank % dims_[i].size;
    rank /= dims_[i].size;
  }
  return c;
}

int MeshShape::linear(const std::vector<int>& coords, const std::vector<bool>& in_group, bool want) const {
  int r = 0;
  for (std::size_t i = 0; i < dims_.size(); ++i) {
    if (in_group[i] == want) r = r * dims_[i].size + coords[i];
  }
  return r;
}

int MeshShape::rank_of(const std::vector<int>& coords) const {
  TRI_CHECK(coords.size() == dims_.size(), "a mesh coordinate has {} entries for {} dimensions", coords.size(),
            dims_.size());
  return linear(coords, std::vector<bool>(dims_.size(), true), true);
}

int MeshShape::coord(int rank, std::string_view name) const {
  return linear(coords(rank), mask(group(name)), true);
}

int MeshShape::split_color(int rank, std::string_view name) const {
  return linear(coords(rank), mask(group(name)), false);
}

std::vector<int> MeshShape::members(int rank, std::string_view name) const {
  const std::vector<bool> in = mask(group(name));
  std::vector<int> c = coords(rank), out(static_cast<std::size_t>(size(name)));
  for (int k = 0; k < static_cast<int>(out.size()); ++k) {  // group rank k -> its coordinates
    int rest = k;
    for (std::size_t i = dims_.size(); i-- > 0;) {
      if (!in[i]) continue;
      c[i] = rest % dims_[i].size;
      rest /= dims_[i].size;
    }
    out[static_cast<std::size_t>(k)] = rank_of(c);
  }
  return out;
}

std::string MeshShape::describe() const {
  std::string s;
  for (const MeshDim& d : dims_) s += fmt::format("{}{}({})", s.empty() ? "" : " * ", d.name, d.size);
  std::string compound;
  for (const MeshGroup& g : groups_) {
    if (g.dims.size() < 2) continue;
    std::string parts;
    for (const std::string& d : g.dims) parts += (parts.empty() ? "" : " * ") + d;
    compound += fmt::format("{}{} = {} = {}", compound.empty() ? "" : ", ", g.name, parts, size(g.name));
  }
  return compound.empty() ? s : s + " (" + compound + ")";
}

void validate_mesh(const MeshShape& s, int world_size) {
  TRI_CHECK(s.world() == world_size,
            "mesh {} has {} ranks != world size {}: launch {} ranks or choose sizes whose product is {}",
            s.describe(), s.world(), world_size, s.world(), world_size);
}

Mesh::Mesh(std::unique_ptr<Communicator> world, MeshShape shape) : shape_(std::move(shape)), world_(std::move(world)) {
  TRI_CHECK(world_ != nullptr, "Mesh: null world communicator");
  validate_mesh(shape_, world_->size());
  const int r = world_->rank();
  for (const MeshGroup& g : shape_.groups()) {
    groups_.push_back(world_->split(shape_.split_color(r, g.name), shape_.coord(r, g.name), g.name));
  }
}

Communicator& Mesh::group(std::string_view name) {
  const std::vector<MeshGroup>& gs = shape_.groups();
  for (std::size_t i = 0; i < gs.size(); ++i) {
    if (gs[i].name == name) return *groups_[i];
  }
  shape_.group(name);  // throws, naming the groups there are
  throw Error("unreachable");
}

void Mesh::set_timeout(double seconds) {
  world_->set_timeout(seconds);
  for (auto& g : groups_) g->set_timeout(seconds);
}
void Mesh::set_debug(bool on) {
  world_->set_debug(on);
  for (auto& g : groups_) g->set_debug(on);
}
void Mesh::set_timeout_action(TimeoutAction action) {
  world_->set_timeout_action(action);
  for (auto& g : groups_) g->set_timeout_action(action);
}

}  // namespace trident::comm
