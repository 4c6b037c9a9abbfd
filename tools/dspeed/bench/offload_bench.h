// `dspeed bench offload`: ZeRO-Offload and ZeRO-Infinity measured in one run, each figure beside its reference:
//   disk     fio's O_DIRECT sequential write and read bandwidth in the swap directory, and our io_uring engine's on
//            the same file size and settings;
//   swap     training with the optimizer state on NVMe (pipelined, and without the pipeline): step time against
//            the resident run, swap bandwidth against what fio's rates give for the same bytes, and the share of
//            the step spent waiting for the disk (what the pipeline did not hide);
//   limit    --device-memory-limit (512 MiB by default) with model states several times that, at stage 3 with the
//            parameters and optimizer offloaded: step time against the resident run;
//   adam     our CPU Adam (fp32 master, moments and gradient, bf16 parameter written in the same pass) against
//            torch.optim.AdamW on as many parameters, and against the memory bandwidth its bytes imply (a triad
//            measured in the same run).
#pragma once

#include <cstdint>
#include <string>

namespace ds {

struct OffloadBenchOptions {
  std::string dir = "/tmp";  // swap files and fio's test file go here: put it on the NVMe drive
  std::string model = "gpt2";
  int steps = 3, warmup = 1, seq_len = 256, micro = 1, threads = 2;
  int64_t sub_group_size = 5000000;  // elements per swapped tile
  int64_t device_limit = int64_t(512) << 20;
  int64_t fio_mib = 1024;              // bytes fio and our engine move each way
  int64_t adam_numel = int64_t(1) << 25;
  std::string python = "/usr/bin/python3";
  std::string torch_script = "bench/torch_adamw.py";
  bool skip_fio = false, skip_train = false, skip_limit = false, skip_adam = false, skip_torch = false;
  std::string json_out;  // append the figures as one JSON line
};

// Runs the sections not skipped, prints a table per section; returns the JSON line.
std::string run_offload_bench(const OffloadBenchOptions& options);

}  // namespace ds
