// Entry points of the `trident` subcommands; src/cli/main.cpp dispatches to them. Each takes the
// subcommand's own argv (argv[0] is the subcommand name) and returns the process exit code.
#pragma once

namespace trident::cli {

int run_ckpt(int argc, char** argv);  // trident ckpt info DIR
int run_bench_comm(int argc, char** argv);
int run_bench_decode(int argc, char** argv);  // trident bench decode [--models ...] [--formats ...]  // trident bench comm [--max-bytes N] (under mpirun)
int run_prepare(int argc, char** argv);  // trident prepare --input FILE... | --corpus janeausten --out PREFIX

int run_train(int argc, char** argv);     // trident train [--config FILE] [--option value ...]
int run_generate(int argc, char** argv);  // trident generate --ckpt DIR --prompt TEXT
int run_bench(int argc, char** argv);     // trident bench comm
int run_eval(int argc, char** argv);      // trident eval --ckpt DIR --data SHARD
int run_quantize(int argc, char** argv);
int run_dequantize(int argc, char** argv);  // trident dequantize --ckpt QDIR --out DIR
int run_merge_lora(int argc, char** argv);  // trident merge-lora --base DIR --adapter DIR --out DIR  // trident quantize --ckpt DIR --out DIR --format int8|q4
int run_plan(int argc, char** argv);      // trident plan --model PRESET --world N [--memory-per-rank BYTES]

}  // namespace trident::cli
