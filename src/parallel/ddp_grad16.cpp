// ZeRO 0-1's 16-bit gradients in DataParallel (see ddp_reducer.h, --grad-dtype): each layer
// group's fp32 working buffer during its backward, folded into the 16-bit flat store with one
// rounding when the group is final, and the fp32 wire buffers the dp sums go through.
#include <algorithm>
#include <utility>

#include "parallel/ddp_reducer.h"

namespace trident::parallel {

std::vector<std::vector<int>> group_working_params(const nn::ParameterSet& params) {
  // One pass over the parameters (a deep model has as many groups as layers: a pass per group
  // would be quadratic, minutes for 10^5 layers in the start-up memory check).
  std::vector<std::vector<int>> ids(static_cast<std::size_t>(params.num_groups()));
  for (int id = 0; id < params.size(); ++id) {
    const nn::ParamInfo& p = params.info(id);
    if (p.grad_offset >= 0) ids.at(static_cast<std::size_t>(p.group)).push_back(id);
  }
  const int tied = params.find_tied();
  const int head = params.find_group(nn::GroupRole::kHead);
  if (head >= 0 && tied >= 0 && params.info(tied).group != head && params.info(tied).grad_offset >= 0) {
    ids[static_cast<std::size_t>(head)].push_back(tied);
  }
  return ids;
}

int64_t group_working_elems(const nn::ParameterSet& params) {
  int64_t most = 0;
  for (const std::vector<int>& group : group_working_params(params)) {
    int64_t n = 0;
    for (int id : group) n += params.info(id).numel;
    most = std::max(most, n);
  }
  return most;
}

void DataParallel::open_working(int g) {
  Working& w = working_[static_cast<std::size_t>(g)];
  if (!w.buf.empty()) return;
  // The tied embedding's embedding-backward part goes to the scratch copy while its head part
  // is being reduced (launch): then not here.
  w.placed.clear();
  int64_t n = 0;
  for (int id : w.ids) {
    if (id == tied_ && !tied_scratch_.empty()) continue;
    w.placed.push_back(id);
    n += params_.info(id).numel;
  }
  if (n == 0) return;
  w.buf = FloatBuffer(tracker_, MemCategory::kGradients, static_cast<std::size_t>(n));
  int64_t at = 0;
  for (int id : w.placed) {
    params_.set_grad_ptr(id, w.buf.data() + at);
    at += params_.info(id).numel;
  }
}

void DataParallel::fold_working(int g) {
  Working& w = working_[static_cast<std::size_t>(g)];
  if (w.buf.empty()) return;
  int64_t at = 0;
  for (int id : w.placed) {
    const nn::ParamInfo& p = params_.info(id);
    flat16_.fold(p.grad_offset, w.buf.data() + at, p.numel);
    params_.set_grad_ptr(id, nullptr);
    at += p.numel;
  }
  w.placed.clear();
  w.buf.reset();
}

void DataParallel::finish_wire(Bucket& b) {
  if (b.wire.empty()) return;
  flat16_.write(b.span.lo, b.span.hi - b.span.lo, b.wire.data());
  b.wire.reset();
}

optim::GradsIn DataParallel::flat_grads_in() const {
  return flat16_on_ ? flat16_.grads() : optim::GradsIn(params_.grads().data());
}

}  // namespace trident::parallel
