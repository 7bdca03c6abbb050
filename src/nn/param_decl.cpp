// Slicing a declared parameter for one tensor-parallel rank.
#include "nn/param_decl.h"

#include "core/check.h"

namespace trident::nn {

namespace {

ShardSpec even_split(const ParamDecl& d, int rank, int size) {
  ShardSpec s;
  s.dim = d.dim;
  if (size == 1) return s;
  const int64_t extent = d.shape.at(static_cast<std::size_t>(d.dim));
  const int64_t part = extent / d.sections;
  const int64_t units = part / d.unit;
  TRI_CHECK(units % size == 0,
            "{}: tensor parallelism {} does not divide its {} {} (each rank takes whole ones); "
            "choose a tp that divides {}",
            d.name, size, units, d.unit > 1 ? "heads" : "rows", units);
  const int64_t local = part / size;
  for (int p = 0; p < d.sections; ++p) s.chunks.push_back({p * part + rank * local, local});
  return s;
}

}  // namespace

bool is_packable(const ParamDecl& d) {
  return d.matmul && !d.keep_fp32 && d.shape.size() == 2 && d.role == ParamRole::kOther && !d.lora;
}

ParamInfo shard_for_tp(const ParamDecl& d, const ModelConfig& config, int rank, int size) {
  const int64_t padded_vocab = config.padded_vocab(size), vocab_size = config.vocab_size;
  ParamInfo info;
  info.name = d.name;
  info.logical_shape = d.shape;
  info.weight_decay = d.weight_decay;
  info.init_std = d.init_std;
  info.init_value = d.init_value;
  info.init_uniform = d.init_uniform;
  info.frozen = config.lora.enabled() && !d.lora;
  info.packed = info.frozen && config.packed_base() && is_packable(d);
  info.role = d.role;
  info.tied = d.tied;
  info.operand_only = d.operand_only;
  info.expert = d.expert;
  switch (d.split) {
    case TpSplit::kReplicated:
      info.tp_owner = rank == 0;
      break;
    case TpSplit::kSplit:
      info.shard = even_split(d, rank, size);
      break;
    case TpSplit::kVocab: {
      info.shard.dim = 0;
      const int64_t local = padded_vocab / size;
      const int64_t begin = rank * local;
      const int64_t real = std::max<int64_t>(0, std::min<int64_t>(local, vocab_size - begin));
      if (real > 0) info.shard.chunks.push_back({begin, real});
      if (local - real > 0) info.shard.chunks.push_back({-1, local - real});
      break;
    }
    case TpSplit::kKvHeads: {
      const int64_t heads = d.shape.at(0) / d.unit;
      if (heads % size == 0) {
        info.shard = even_split(d, rank, size);
        break;
      }
      TRI_CHECK(size % heads == 0,
                "{}: {} key/value heads and tensor parallelism {}: neither divides the other, so "
                "the heads cannot be split or replicated evenly; choose a tp that divides {} or "
                "is a multiple of it",
                d.name, heads, size, heads);
      const int64_t replicas = size / heads;
      const int64_t head = rank / replicas;
      info.shard.dim = 0;
      info.shard.chunks.push_back({head * d.unit, d.unit});
      info.tp_owner = rank % replicas == 0;
      info.tp_replicas = static_cast<int>(replicas);
      break;
    }
  }
  return info;
}

void add_declared(ParameterSet& params, const std::vector<ParamDecl>& decls, const ModelConfig& config,
                  int tp_rank, int tp_size) {
  for (const ParamDecl& d : decls) params.add(shard_for_tp(d, config, tp_rank, tp_size));
}

std::vector<ParamDecl> local_experts(std::vector<ParamDecl> decls, int ep_rank, int ep_size, int n_experts) {
  if (ep_size == 1) return decls;
  const int per_rank = n_experts / ep_size;
  std::erase_if(decls, [&](const ParamDecl& d) { return d.expert >= 0 && d.expert / per_rank != ep_rank; });
  return decls;
}

int declared_param_id(const ParameterSet& params, const ParamDecl& decl) {
  const int id = params.find(decl.name);
  TRI_CHECK(id >= 0, "{} is declared but not registered (the block registers its layer's declarations)",
            decl.name);
  return id;
}

}  // namespace trident::nn
