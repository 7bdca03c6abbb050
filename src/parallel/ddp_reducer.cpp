// DDP buckets and ZeRO 1-3 over the dp group (see ddp_reducer.h); ZeRO-3's gathers and shard
// values are in ddp_zero3.cpp.
#include "parallel/ddp_reducer.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "core/timer.h"
#include "kernels/kernels.h"

namespace trident::parallel {

namespace {

// One ZeRO segment over dp; under expert parallelism the expert parameters' runs over edp.
ShardLayout make_shard_layout(const nn::ParameterSet& params, const comm::Communicator& dp,
                              const comm::Communicator* edp) {
  return ShardLayout(params.total_numel(), edp ? expert_runs(params) : std::vector<FlatRange>{}, dp.rank(), dp.size(),
                     edp ? edp->rank() : dp.rank(), edp ? edp->size() : dp.size());
}

}  // namespace

std::vector<BucketSpan> assign_buckets(const nn::ParameterSet& params, int64_t cap_elems, bool grad_layout) {
  std::vector<BucketSpan> out;
  for (int id = params.size() - 1; id >= 0; --id) {
    const nn::ParamInfo& p = params.info(id);
    if (grad_layout && p.grad_offset < 0) continue;  // frozen: no gradient to reduce
    const int64_t at = grad_layout ? p.grad_offset : p.offset;
    // Parameters are registered at increasing offsets: a bucket grows downwards.
    if (!out.empty() && out.back().hi - at <= cap_elems) {
      out.back().first = id;
      out.back().lo = at;
      continue;
    }
    out.push_back({id, id, at, at + p.numel});
  }
  return out;
}

DataParallel::DataParallel(nn::ParameterSet& params, comm::Communicator& dp, MemoryTracker& tracker,
                           const DataParallelOptions& options)
    : params_(params), dp_(dp), tracker_(tracker), options_(options),
      layout_(make_shard_layout(params, dp, options.expert_group)) {
  TRI_CHECK(options.zero >= 0 && options.zero <= 3, "ZeRO stage {} is not one of 0, 1, 2, 3",
            options.zero);
  const double cap = options.bucket_mb * 1024.0 * 1024.0 / sizeof(float);
  // ZeRO 0-1 reduce the flat gradient buffer (the trained parameters only: ParamInfo::grad_offset);
  // ZeRO 2-3 reduce-scatter buckets cut from the value layout their shards follow.
  spans_ = assign_buckets(params, cap < 1.0 ? 1 : static_cast<int64_t>(cap), options.zero < 2);
  {
    const int w = params.find_tied();
    const int hg = params.find_group(nn::GroupRole::kHead);
    const int eg = params.find_group(nn::GroupRole::kEmbedding);
    const nn::ParamInfo* wi = w >= 0 ? &params.info(w) : nullptr;
    // (Not for 16-bit gradients at one dp rank, where nothing is summed: the reducer is there for
    // the 16-bit store alone, and the scratch copy would be 4 bytes a row of overhead.)
    const bool store_only = options.grad_dtype != GradDType::kFp32 && dp.size() == 1 && !options.expert_group;
    tied_split_ = options.zero < 2 && wi && wi->grad_offset >= 0 && hg >= 0 && wi->group == eg &&
                  wi->shard.dim == 0 && wi->shard.chunks.size() <= 2 && !store_only;
    if (tied_split_) {
      // The tied embedding alone in a bucket: cut the bucket that holds it.
      std::vector<BucketSpan> cut;
      for (const BucketSpan& b : spans_) {
        if (w < b.first || w > b.last) {
          cut.push_back(b);
          continue;
        }
        const int64_t wlo = wi->grad_offset, whi = wi->grad_offset + wi->numel;  // ZeRO 0-1: gradient layout
        if (b.last > w) cut.push_back({w + 1, b.last, whi, b.hi});
        cut.push_back({w, w, wlo, whi});
        if (b.first < w) cut.push_back({b.first, w - 1, b.lo, wlo});
      }
      spans_ = std::move(cut);
    }
  }
  bucket_of_.assign(static_cast<std::size_t>(params.size()), -1);
  group_buckets_.assign(static_cast<std::size_t>(params.num_groups()), {});
  buckets_.resize(spans_.size());
  for (std::size_t b = 0; b < spans_.size(); ++b) {
    Bucket& bk = buckets_[b];
    bk.span = spans_[b];
    for (int id = bk.span.first; id <= bk.span.last; ++id) {
      bucket_of_[static_cast<std::size_t>(id)] = static_cast<int>(b);
      const int g = params.info(id).group;
      if (std::find(bk.groups.begin(), bk.groups.end(), g) == bk.groups.end()) {
        bk.groups.push_back(g);
        group_buckets_[static_cast<std::size_t>(g)].push_back(static_cast<int>(b));
      }
    }
  }
  group_final_.assign(static_cast<std::size_t>(params.num_groups()), 0);
  // The tied embedding: its group (the embeddings on a first stage) and the head that also
  // reads it and writes its gradient.
  tied_ = params.find_tied();
  head_group_ = params.find_group(nn::GroupRole::kHead);
  embed_group_ = params.find_group(nn::GroupRole::kEmbedding);
  if (tied_ >= 0) tied_group_ = params.info(tied_).group;
  if (tied_split_) {
    tied_bucket_ = bucket_of_[static_cast<std::size_t>(tied_)];
    // Its only producer before the embedding backward is the head.
    Bucket& b = buckets_[static_cast<std::size_t>(tied_bucket_)];
    auto& eb = group_buckets_[static_cast<std::size_t>(tied_group_)];
    eb.erase(std::remove(eb.begin(), eb.end(), tied_bucket_), eb.end());
    b.groups = {head_group_};
    group_buckets_[static_cast<std::size_t>(head_group_)].push_back(tied_bucket_);
  }

  if (options_.zero < 2 && options_.grad_dtype != GradDType::kFp32) {
    TRI_CHECK(!options_.pipeline, "16-bit gradients ({}) at ZeRO-{} are not implemented under a pipeline",
              grad_dtype_names()[static_cast<std::size_t>(options_.grad_dtype)], options_.zero);
    // The flat fp32 gradients (if made) go: 16 bits at rest, fp32 only per group in backward.
    params_.release_flat_grads();
    flat16_on_ = true;
    flat16_ = GradShard(tracker_, params_.grad_numel(), options_.grad_dtype);
    working_.resize(static_cast<std::size_t>(params_.num_groups()));
    std::vector<std::vector<int>> ids = group_working_params(params_);
    for (std::size_t g = 0; g < ids.size(); ++g) working_[g].ids = std::move(ids[g]);
  }
  if (options_.zero >= 2) {
    // The flat gradients (zeros at construction) go first, so the start-up peak never holds both.
    params_.release_flat_grads();
    shard_grads_ = GradShard(tracker_, layout_.numel(), options_.grad_dtype);
  }
  if (options_.shard_master) {
    TRI_CHECK(options_.zero == 1 || options_.zero == 2, "the sharded fp32 master is ZeRO-1/2's, not ZeRO-{}'s",
              options_.zero);
    master_ = std::make_unique<ShardedMaster>(params_, layout_, tracker_, options_.offload_master);
  }
  if (options_.zero >= 3 && options_.offload_values) {
    gathered_.resize(static_cast<std::size_t>(params.num_groups()));  // the values wait for the store
  } else if (options_.zero >= 3) {
    shard_values_ = FloatBuffer(tracker_, MemCategory::kParameters, static_cast<std::size_t>(layout_.numel()));
    // Keep whatever the flat buffer holds (normally nothing yet: initialise or load after).
    if (!params_.values().empty()) {
      for (const ShardSegment& s : layout_.segments) {
        std::memcpy(shard_values_.data() + s.base, params_.values().data() + s.my_lo(),
                    static_cast<std::size_t>(s.my_hi() - s.my_lo()) * sizeof(float));
      }
    }
    params_.release_flat_values();
    gathered_.resize(static_cast<std::size_t>(params.num_groups()));
  }
}

DataParallel::~DataParallel() {
  // Never leave a collective writing into a buffer we are about to free.
  for (Bucket& b : buckets_) {
    for (comm::Work& w : b.works) {
      try { w.wait(); } catch (...) {}
    }
  }
  for (Gathered& g : gathered_) {
    for (comm::Work& w : g.works) {
      try { w.wait(); } catch (...) {}
    }
  }
}

void DataParallel::wait(comm::Work& w) {
  Stopwatch sw;
  w.wait();
  wait_s_ += sw.seconds();
}

void DataParallel::wait_all(std::vector<comm::Work>& works) {
  for (comm::Work& w : works) wait(w);
}

comm::Work DataParallel::sum(comm::Communicator& group, std::span<float> buf) {
  if (options_.reduce_dtype == GradReduceDType::kBf16) return group.allreduce_bf16(buf);
  return group.allreduce(buf, comm::ReduceOp::kSum);
}

void DataParallel::begin_step() {
  wait_s_ = 0.0;
  params_.zero_grads();
  if (!shard_grads_.empty()) shard_grads_.zero();
  if (flat16_on_) flat16_.zero();
}

void DataParallel::begin_micro_batch(bool last) {
  armed_ = options_.zero >= 2 || last;
  current_bwd_ = -1;
  std::fill(group_final_.begin(), group_final_.end(), 0);
  for (Bucket& b : buckets_) {
    b.pending = static_cast<int>(b.groups.size());
    b.ready = b.launched = b.retired = false;
  }
}

void DataParallel::ensure_grad_storage(int bi) {
  Bucket& b = buckets_[static_cast<std::size_t>(bi)];
  if (options_.zero < 2 || !b.grad.empty() || b.span.hi == b.span.lo) return;
  TRI_CHECK(!b.launched, "ZeRO-{}: a gradient of bucket {} was written after its reduction started",
            options_.zero, bi);
  b.grad = FloatBuffer(tracker_, MemCategory::kGradients, static_cast<std::size_t>(b.span.hi - b.span.lo));
  for (int id = b.span.first; id <= b.span.last; ++id) {
    params_.set_grad_ptr(id, b.grad.data() + (params_.info(id).offset - b.span.lo));
  }
}

void DataParallel::launch(Bucket& b) {
  b.launched = true;
  const int64_t n = b.span.hi - b.span.lo;
  if (tied_split_ && &b - buckets_.data() == tied_bucket_) {
    // The embedding backward (still to come) accumulates into a scratch copy from now on.
    tied_scratch_ = FloatBuffer(tracker_, MemCategory::kCommBuffers, static_cast<std::size_t>(n));
    params_.set_grad_ptr(tied_, tied_scratch_.data());
  }
  b.works.clear();
  if (options_.zero < 2) {
    // 16-bit gradients: the bucket's elements widened into an fp32 wire buffer, summed there,
    // and rounded back once (finish_wire, after the wait).
    float* data = params_.grads().data();
    int64_t origin = 0;
    if (flat16_on_) {
      if (dp_.size() == 1) return;  // one rank (no ep either): the store holds the sum already
      b.wire = FloatBuffer(tracker_, MemCategory::kCommBuffers, static_cast<std::size_t>(n));
      flat16_.read(b.span.lo, n, b.wire.data());
      data = b.wire.data();
      origin = b.span.lo;
    }
    if (options_.expert_group) {
      launch_split(b, data, origin);
    } else {
      // Sum: every rank's gradient is its rows' share of the global mean.
      b.works.push_back(sum(dp_, std::span<float>(data + (b.span.lo - origin), static_cast<std::size_t>(n))));
    }
    if (flat16_on_) {
      // Bound the wire buffers (4 bytes an element: all of them would undo the 16-bit saving):
      // the oldest sums are waited for and rounded back once more than two are in flight.
      constexpr std::size_t kMaxWires = 2;
      in_flight_.push_back(static_cast<int>(&b - buckets_.data()));
      while (in_flight_.size() > kMaxWires) {
        Bucket& o = buckets_[static_cast<std::size_t>(in_flight_.front())];
        wait_all(o.works);
        o.works.clear();
        finish_wire(o);
        in_flight_.pop_front();
      }
    }
    return;
  }
  ensure_grad_storage(static_cast<int>(&b - buckets_.data()));
  // Each ZeRO segment the bucket overlaps (one without ep) is reduce-scattered over its own
  // group: dp, or edp for experts (the same sums as stage 0's, each rank keeping its part).
  struct Cut {
    const ShardSegment* seg;
    int64_t lo, hi;
  };
  std::vector<Cut> cuts;
  b.recv_parts.clear();
  int64_t received = 0;
  for (const ShardSegment& s : layout_.segments) {
    const int64_t lo = std::max(b.span.lo, s.lo), hi = std::min(b.span.hi, s.hi);
    if (lo >= hi) continue;
    cuts.push_back({&s, lo, hi});
    b.recv_parts.push_back(layout_.mine(lo, hi));
    received += b.recv_parts.back().second - b.recv_parts.back().first;
  }
  b.recv = FloatBuffer(tracker_, MemCategory::kCommBuffers, static_cast<std::size_t>(received));
  int64_t at = 0;
  for (std::size_t i = 0; i < cuts.size(); ++i) {
    const Cut& c = cuts[i];
    const int64_t mine = b.recv_parts[i].second - b.recv_parts[i].first;
    const std::span<const float> in(b.grad.data() + (c.lo - b.span.lo), static_cast<std::size_t>(c.hi - c.lo));
    const std::span<float> out(b.recv.data() + at, static_cast<std::size_t>(mine));
    at += mine;
    comm::Communicator& group = group_of(*c.seg);
    if (group.size() == 1) {  // an edp group of one (ep == dp): the sum is this rank's gradient
      std::copy(in.begin(), in.end(), out.begin());
      continue;
    }
    const std::vector<int64_t> counts = c.seg->counts_of(c.lo, c.hi);
    b.works.push_back(options_.reduce_dtype == GradReduceDType::kBf16
                          ? group.reduce_scatter_bf16_v(in, out, std::span<const int64_t>(counts))
                          : group.reduce_scatter_v(in, out, std::span<const int64_t>(counts), comm::ReduceOp::kSum));
  }
  // Bound the gradient working set: retire what has finished, and wait for the oldest when
  // more than kMaxInFlight buckets are still being reduced.
  constexpr std::size_t kMaxInFlight = 2;
  auto finished = [](Bucket& x) {
    return std::all_of(x.works.begin(), x.works.end(), [](comm::Work& w) { return w.test(); });
  };
  in_flight_.push_back(static_cast<int>(&b - buckets_.data()));
  while (!in_flight_.empty() &&
         (in_flight_.size() > kMaxInFlight || finished(buckets_[static_cast<std::size_t>(in_flight_.front())]))) {
    retire(buckets_[static_cast<std::size_t>(in_flight_.front())]);
    in_flight_.pop_front();
  }
}

void DataParallel::launch_split(Bucket& b, float* data, int64_t origin) {
  // Runs of consecutive parameters of one kind (dense or expert), each summed over its group:
  // the expert-data-parallel group for experts (nothing when it is one rank), dp otherwise. The
  // sums are the same as unsplit: every rank's gradient is its rows' share of the global mean,
  // an expert's already summed over its ep group's tokens by the owner.
  comm::Communicator& edp = *options_.expert_group;
  // Frozen parameters hold no room in the gradient buffer: they neither join nor cut a run.
  int id = b.span.first;
  while (id <= b.span.last) {
    if (params_.info(id).grad_offset < 0) {
      ++id;
      continue;
    }
    const bool expert = params_.info(id).expert >= 0;
    int end = id;
    for (int k = id + 1; k <= b.span.last; ++k) {
      if (params_.info(k).grad_offset < 0) continue;
      if ((params_.info(k).expert >= 0) != expert) break;
      end = k;
    }
    const int64_t lo = params_.info(id).grad_offset, hi = params_.info(end).grad_offset + params_.info(end).numel;
    const std::span<float> run(data + (lo - origin), static_cast<std::size_t>(hi - lo));
    if (!expert) {
      b.works.push_back(sum(dp_, run));
    } else if (edp.size() > 1) {
      b.works.push_back(sum(edp, run));
    }
    id = end + 1;
  }
}

void DataParallel::retire(Bucket& b) {
  if (b.retired) return;
  wait_all(b.works);
  // Gradient accumulation over micro-batches happens here, on the reduced shard: in fp32, or
  // (16-bit gradients) the stored value plus this micro-batch's fp32 part, rounded once.
  const float* r = b.recv.data();
  for (const auto& [lo, hi] : b.recv_parts) {
    if (hi <= lo) continue;
    shard_grads_.fold(layout_.index(lo), r, hi - lo);
    r += hi - lo;
  }
  b.recv.reset();
  b.grad.reset();
  for (int id = b.span.first; id <= b.span.last; ++id) params_.set_grad_ptr(id, nullptr);
  b.retired = true;
}

void DataParallel::group_final(int g) {
  if (g < 0 || group_final_[static_cast<std::size_t>(g)]) return;
  group_final_[static_cast<std::size_t>(g)] = 1;
  // 16-bit gradients: the group's fp32 gradients of this micro-batch go into the store first.
  if (flat16_on_) fold_working(g);
  for (int bi : group_buckets_[static_cast<std::size_t>(g)]) {
    Bucket& b = buckets_[static_cast<std::size_t>(bi)];
    if (--b.pending > 0) continue;
    b.ready = true;
    if (armed_ && options_.overlap) launch(b);
  }
}

void DataParallel::end_micro_batch() {
  if (flat16_on_) {
    for (int g = 0; g < params_.num_groups(); ++g) fold_working(g);  // any group not reported final
  }
  if (armed_) {
    // In bucket order: the same on every rank (and the launch order when overlap is off).
    for (Bucket& b : buckets_) {
      if (!b.launched) launch(b);
    }
    if (options_.zero < 2) {
      for (Bucket& b : buckets_) {
        wait_all(b.works);
        if (flat16_on_) finish_wire(b);
      }
      in_flight_.clear();
    }
    if (tied_split_) finish_tied_rows();
  }
  if (options_.zero >= 2) {
    for (Bucket& b : buckets_) retire(b);
    in_flight_.clear();
  }
  release_all();
}

void DataParallel::finish_tied_rows() {
  const nn::ParamInfo& w = params_.info(tied_);
  const int64_t rows = w.local_shape[0], C = rows > 0 ? w.numel / rows : 0;
  // Every dp rank's token ids (same count everywhere), then the union of local rows.
  std::vector<int32_t> all(static_cast<std::size_t>(n_ids_ * dp_.size()));
  TRI_CHECK(ids_ != nullptr || n_ids_ == 0, "DataParallel::set_tokens was not called");
  comm::Work ids_work = dp_.all_gather(std::span<const int32_t>(ids_, static_cast<std::size_t>(n_ids_)),
                                       std::span<int32_t>(all));
  wait(ids_work);
  std::vector<int64_t> local_rows;
  for (int32_t id : all) {
    int64_t at = 0;  // the local row of logical row `id`, if this rank holds it
    for (const nn::Chunk& c : w.shard.chunks) {
      if (c.logical_begin >= 0 && id >= c.logical_begin && id < c.logical_begin + c.length) {
        local_rows.push_back(at + (id - c.logical_begin));
      }
      at += c.length;
    }
    if (w.shard.is_full()) local_rows.push_back(id);
  }
  std::sort(local_rows.begin(), local_rows.end());
  local_rows.erase(std::unique(local_rows.begin(), local_rows.end()), local_rows.end());
  std::vector<float> packed(local_rows.size() * static_cast<std::size_t>(C));
  for (std::size_t i = 0; i < local_rows.size(); ++i) {
    std::memcpy(packed.data() + i * C, tied_scratch_.data() + local_rows[i] * C, static_cast<std::size_t>(C) * sizeof(float));
  }
  comm::Work work = sum(dp_, std::span<float>(packed));
  wait(work);
  if (flat16_on_) {
    // The reduced head part, widened, plus the rows, rounded once into the store.
    for (std::size_t i = 0; i < local_rows.size(); ++i) {
      flat16_.fold(w.grad_offset + local_rows[i] * C, packed.data() + i * C, C);
    }
    params_.set_grad_ptr(tied_, nullptr);
    tied_scratch_.reset();
    return;
  }
  float* g = params_.grads().data() + w.grad_offset;  // already summed over dp (the head's part)
  for (std::size_t i = 0; i < local_rows.size(); ++i) {
    float* row = g + local_rows[i] * C;
    const float* add = packed.data() + i * C;
    for (int64_t c = 0; c < C; ++c) row[c] += add[c];
  }
  params_.set_grad_ptr(tied_, g);
  tied_scratch_.reset();
}

double DataParallel::shard_grad_sumsq(const std::function<bool(int)>& owns) const {
  if (options_.zero < 2) return 0.0;
  double sum = 0.0;
  for (int id = 0; id < params_.size(); ++id) {
    const nn::ParamInfo& p = params_.info(id);
    const auto [lo, hi] = layout_.mine(p.offset, p.offset + p.numel);
    if (hi > lo && owns(id)) sum += shard_grads_.sum_squares(layout_.index(lo), hi - lo);
  }
  return sum;
}

void DataParallel::optimizer_step(optim::AdamW& adamw, float lr, float grad_scale) {
  TRI_CHECK(adamw.owned() == optimizer_ranges(),
            "the optimizer's {} flat ranges are not this rank's ZeRO-{} ranges ({})", adamw.owned().size(),
            options_.zero, optimizer_ranges().size());
  using At = optim::AdamW::At;
  if (master_) {
    // The operand-only pieces' values from the master shard (offloaded: from each store block,
    // rounded into the 16-bit copy as they pass), the others' from the flat buffer; then the
    // value-read elements gathered in fp32, the 16-bit copy at the next refresh.
    TRI_CHECK(master_->offloaded() == options_.offload_master,
              "the offloaded fp32 master was not attached to the optimizer's store");
    const optim::AdamW::ValuesAt at = [this](int64_t flat, int64_t n, const optim::MomentStore::Block& b) {
      return master_->values_at(flat, n, b);
    };
    optim::AdamW::BlockDone done;
    if (master_->offloaded()) done = [this](const optim::MomentStore::Block& b) { master_->round_block(b); };
    master_->begin_update(adamw.step_count() + 1);
    adamw.step(at, options_.zero == 1 ? flat_grads_in() : shard_grads_.grads(), lr, grad_scale,
               options_.zero == 1 ? At::kFlat : At::kOwned, done);
    master_->gather_flat_values([this](const ShardSegment& s) -> comm::Communicator& { return group_of(s); },
                                [this](std::vector<comm::Work>& w) { wait_all(w); });
    return;
  }
  float* v = params_.values().data();
  switch (options_.zero) {
    case 0: adamw.step(v, flat_grads_in(), lr, grad_scale, At::kFlat, At::kFlat); return;  // owns [0, total)
    case 1: adamw.step(v, flat_grads_in(), lr, grad_scale, At::kFlat, At::kFlat); break;
    case 2: adamw.step(v, shard_grads_.grads(), lr, grad_scale, At::kFlat, At::kOwned); break;
    default:
      TRI_CHECK(!value_store_ || value_store_ == &adamw.moments(),
                "the offloaded value shard is not in this optimizer's store");
      adamw.step(value_store_ ? nullptr : shard_values_.data(), shard_grads_.grads(), lr, grad_scale);
      return;
  }
  // Stages 1-2: every rank updated its shard; gather each segment's full values in place over
  // its group (dp; edp for experts).
  std::vector<comm::Work> works;
  for (const ShardSegment& s : layout_.segments) {
    comm::Communicator& group = group_of(s);
    if (group.size() == 1) continue;
    works.push_back(group.all_gather_v(
        std::span<const float>(v + s.my_lo(), static_cast<std::size_t>(s.my_hi() - s.my_lo())),
        std::span<float>(v + s.lo, static_cast<std::size_t>(s.hi - s.lo)),
        std::span<const int64_t>(s.counts_of(s.lo, s.hi))));
  }
  wait_all(works);
}

void DataParallel::refresh_weight_copy(kernels::MatmulEngine& mm, const nn::WeightRounding& r) {
  if (!master_ || !master_->stale()) return;
  master_->refresh(mm, r, [this](const ShardSegment& s) -> comm::Communicator& { return group_of(s); },
                   [this](std::vector<comm::Work>& w) { wait_all(w); });
}

// ---- hooks ----

void DataParallel::before_group_forward(int g) {
  if (options_.zero < 3) return;
  std::vector<int> keep = values_needed(g, false);
  std::vector<int> next;
  if (g + 1 < params_.num_groups()) next = values_needed(g + 1, false);
  std::vector<int> all = keep;
  all.insert(all.end(), next.begin(), next.end());
  std::vector<int> ahead;  // offloaded values: the group after the next one is read now
  if (value_store_ && g + 2 < params_.num_groups()) ahead = values_needed(g + 2, false);
  keep_only(all);
  if (value_store_) {  // a read ahead that another order of hooks made stale (pipelines) goes
    for (int h = 0; h < params_.num_groups(); ++h) {
      auto in = [h](const std::vector<int>& v) { return std::find(v.begin(), v.end(), h) != v.end(); };
      if (!in(all) && !in(ahead)) reads_[static_cast<std::size_t>(h)].reset();
    }
  }
  for (int h : keep) acquire(h);
  for (int h : next) issue_gather(h);
  for (int h : ahead) prefetch(h);
}

void DataParallel::before_group_backward(int g) {
  // The group whose backward ran before this one is final unless the tied embedding is in it
  // (its gradient gets more from the embedding backward, which reports itself).
  if (!options_.pipeline && current_bwd_ >= 0 && current_bwd_ != g && current_bwd_ != tied_group_) {
    group_final(current_bwd_);
  }
  current_bwd_ = g;
  if (flat16_on_) open_working(g);
  if (options_.zero >= 2) {
    for (int bi : group_buckets_[static_cast<std::size_t>(g)]) ensure_grad_storage(bi);
    if (g == head_group_ && tied_ >= 0 && tied_group_ != g) ensure_grad_storage(bucket_of_[static_cast<std::size_t>(tied_)]);
  }
  if (options_.zero < 3) return;
  std::vector<int> keep = values_needed(g, true);
  std::vector<int> next;
  if (g - 1 >= 0) next = values_needed(g - 1, true);
  std::vector<int> all = keep;
  all.insert(all.end(), next.begin(), next.end());
  std::vector<int> ahead;
  if (value_store_ && g - 2 >= 0) ahead = values_needed(g - 2, true);
  keep_only(all);
  if (value_store_) {  // a read ahead that another order of hooks made stale (pipelines) goes
    for (int h = 0; h < params_.num_groups(); ++h) {
      auto in = [h](const std::vector<int>& v) { return std::find(v.begin(), v.end(), h) != v.end(); };
      if (!in(all) && !in(ahead)) reads_[static_cast<std::size_t>(h)].reset();
    }
  }
  for (int h : keep) acquire(h);
  for (int h : next) issue_gather(h);
  for (int h : ahead) prefetch(h);
}

void DataParallel::after_group_backward(int g) { group_final(g); }

}  // namespace trident::parallel
