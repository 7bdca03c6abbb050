// Every data-parallel replica holds the same weights, bit for bit: gather_param and the
// checkpoint read dp rank 0's copy only, so a replica that drifted (a wrong all_gather offset
// in ZeRO-1/2, a rank that skipped an update) would go unseen anywhere else. For each model
// chunk and parameter this rank holds, dp rank 0's values are broadcast over the dp group and
// compared with this rank's; under ZeRO-3 the compared values are the full ones the forward
// uses, all_gathered group by group through the reducer's own hooks; under ZeRO-1/2's sharded
// master (parallel/zero_master.h) the operand-only parameters' fp32 values exist once, in their
// owners' shards, so what is compared for them is the 16-bit copy the matmuls read (made fresh
// first, as the next step would). Collective over the
// world; every rank returns the same count of differing elements (summed over all ranks).
#pragma once

#include <bit>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "parallel/engine.h"

namespace trident::test {

struct ReplicaMismatch {
  int64_t elements = 0;  // over all ranks
  std::string first;     // this rank's first differing element, if any
};

inline ReplicaMismatch compare_dp_replicas(parallel::Engine& e) {
  ReplicaMismatch out;
  comm::Communicator& dp = e.mesh().dp();
  std::vector<float> root;
  auto compare = [&](const nn::ParamInfo& p, const float* mine) {
    root.assign(mine, mine + p.numel);
    dp.broadcast(std::span<float>(root), 0).wait();
    for (int64_t i = 0; i < p.numel; ++i) {
      if (std::bit_cast<uint32_t>(root[static_cast<std::size_t>(i)]) != std::bit_cast<uint32_t>(mine[i])) {
        if (out.first.empty()) {
          out.first = p.name + "[" + std::to_string(i) + "] on dp rank " + std::to_string(dp.rank()) + ": " +
                      std::to_string(mine[i]) + " vs dp rank 0's " + std::to_string(root[static_cast<std::size_t>(i)]);
        }
        ++out.elements;
      }
    }
  };
  std::vector<uint16_t> root16;
  auto compare16 = [&](const nn::ParamInfo& p, const uint16_t* mine) {
    root16.assign(mine, mine + p.numel);
    dp.broadcast_raw(root16.data(), p.numel, comm::DType::kBF16, 0).wait();
    for (int64_t i = 0; i < p.numel; ++i) {
      if (root16[static_cast<std::size_t>(i)] == mine[i]) continue;
      if (out.first.empty()) {
        out.first = p.name + "[" + std::to_string(i) + "] (16-bit copy) on dp rank " + std::to_string(dp.rank());
      }
      ++out.elements;
    }
  };
  e.layout().begin_weight_copies();  // a sharded master's copy remade if stale
  e.layout().end_weight_copies();
  for (int c = 0; c < e.num_chunks(); ++c) {
    nn::ParameterSet& ps = e.chunk_model(c).params();
    parallel::DataParallel* reducer = e.data_parallel(c);
    if (const parallel::ShardedMaster* m = reducer ? reducer->master() : nullptr) {
      for (int id = 0; id < ps.size(); ++id) {
        if (m->holds(id)) {
          compare16(ps.info(id), m->copy() + ps.info(id).offset);
        } else {
          compare(ps.info(id), ps.data(id));
        }
      }
    } else if (reducer && reducer->values_sharded()) {
      for (int g = 0; g < ps.num_groups(); ++g) {
        reducer->before_group_forward(g);  // all_gathers group g (as the forward does)
        for (int id = 0; id < ps.size(); ++id) {
          if (ps.info(id).group == g) compare(ps.info(id), ps.data(id));
        }
      }
      reducer->release_all();
    } else {
      for (int id = 0; id < ps.size(); ++id) compare(ps.info(id), ps.data(id));
    }
  }
  std::vector<int64_t> total{out.elements};
  e.mesh().world().allreduce(std::span<int64_t>(total)).wait();
  out.elements = total[0];
  return out;
}

}  // namespace trident::test
