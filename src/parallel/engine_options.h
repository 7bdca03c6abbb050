// How the engine lays out and optimises one model: the ZeRO stage, the pipeline schedule, the
// tensor-parallel and memory options, AdamW and clipping. Declared once here; `trident train`'s
// run config holds this struct and parses into it (train/run_config.h), so no layer above
// mirrors these fields. The mesh shape (dp x tp x pp) and the batch are not options of the
// engine: they come with the Mesh and the constructor.
#pragma once

#include "kernels/matmul_engine.h"
#include "nn/recompute.h"
#include "optim/adamw.h"
#include "optim/loss_scaler.h"
#include "optim/moment_store.h"
#include "parallel/grad_dtype.h"
#include "parallel/grad_reduce_dtype.h"
#include "parallel/pipeline/schedule.h"

namespace trident::parallel {

struct EngineOptions {
  int zero = 0;                                       // ZeRO stage over dp (0..3)
  pp::ScheduleKind schedule = pp::ScheduleKind::kOneFOneB;  // pipeline schedule when pp > 1
  int virtual_stages = 1;                             // model chunks per pp rank (interleaved)
  bool balance_stages = false;  // pp: split layers by estimated cost (see rank_layout.cpp)
  bool sequence_parallel = false;
  nn::Recompute recompute = nn::Recompute::kNone;             // activation recomputation
  kernels::Precision precision = kernels::Precision::kFp32;  // of every matmul
  // bf16: round the fp32 master weights into their bf16 copy stochastically (nn/bf16_weights.h)
  // instead of to nearest even.
  bool stochastic_rounding = false;
  // ZeRO-1/2 in bf16/fp16: each rank keeps the fp32 master of the operand-only parameters for
  // its own shard only and the matmuls read a persistent 16-bit copy, all-gathered after each
  // update (parallel/zero_master.h: 2 + 4 + 12/N bytes a parameter at ZeRO-1, 2 + 16/N at
  // ZeRO-2), where parallel::shards_master says so. Off: every rank holds them in full (6 bytes
  // with the per-step copy), bitwise the same results; only tests turn it off, to compare.
  bool shard_master = true;
  // Dynamic loss scaling, used when precision is fp16 (optim/loss_scaler.h).
  optim::LossScalerConfig loss_scaler;
  GradReduceDType grad_reduce_dtype = GradReduceDType::kFp32;  // of the dp/edp gradient sums
  // Of the gradient at rest (grad_dtype.h): 16 bits must match precision; ZeRO 2-3 only.
  GradDType grad_dtype = GradDType::kFp32;
  double bucket_mb = 25.0;  // DDP gradient bucket size, MiB
  bool overlap = true;      // overlap gradient allreduce with backward
  optim::AdamWConfig adamw;
  optim::OffloadOptions offload;  // where the AdamW moments live (optim/moment_store.h)
  double grad_clip = 1.0;  // clip the global gradient norm to this; 0: off
};

}  // namespace trident::parallel
