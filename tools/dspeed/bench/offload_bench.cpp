// `dspeed bench offload` (see the header).
#include "offload_bench.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "ds/core/child_process.h"
#include "ds/core/error.h"
#include "ds/core/json_input.h"
#include "ds/core/rng.h"
#include "ds/core/stats.h"
#include "ds/engine/engine.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/offload/aio.h"

namespace ds {

namespace {

using Clock = std::chrono::steady_clock;
double gbs(double bytes, double seconds) { return seconds > 0 ? bytes / seconds / 1e9 : 0.0; }

// ---- disk: fio and our engine --------------------------------------------------------------------------------

struct Disk {
  double fio_write = 0, fio_read = 0;  // bytes/s
  double ours_write = 0, ours_read = 0;
};

double fio_bandwidth(const OffloadBenchOptions& o, const std::string& rw) {
  const std::string out = run_child_output(fmt::format(
      "fio --name=ds_bench --directory='{}' --filename=ds_bench_fio.dat --rw={} --bs=1M --size={}M --direct=1 "
      "--ioengine=io_uring --iodepth=8 --numjobs=1 --output-format=json",
      o.dir, rw, o.fio_mib));
  const size_t at = out.find('{');  // fio may print notes before its JSON
  nlohmann::json j;
  const std::string problem =
      at == std::string::npos ? std::string("no JSON") : parse_json_bounded(out.substr(at), JsonLimits{}, j);
  DS_CHECK_AS(IoError, problem.empty(), "[bench] fio's output is not its JSON report ({}): {}", problem,
              out.substr(0, 500));
  return j.at("jobs").at(0).at(rw == "write" ? "write" : "read").at("bw_bytes").get<double>();
}

// Three rounds of fio write, our write, fio read, our read (the order alternating between rounds), medians of each.
Disk measure_disk(const OffloadBenchOptions& o) {
  // Ours: the same bytes in 64 MiB requests through the default aio settings (1 MiB pieces, depth 8).
  const int64_t bytes = o.fio_mib << 20, chunk = int64_t(64) << 20;
  offload::SwapFile file(o.dir, "ds_bench_aio.swp", bytes, Category::workspace);
  offload::AioEngine aio(offload::AioOptions{});
  std::vector<Tensor> bufs;
  for (int i = 0; i < 2; ++i) {
    bufs.push_back(offload::io_buffer(chunk, Category::workspace, false));
    std::fill_n(static_cast<char*>(bufs.back().raw()), chunk, static_cast<char>(i + 1));
  }
  auto pass = [&](bool write) {
    const auto t0 = Clock::now();
    std::vector<offload::IoTicket> inflight(2);
    for (int64_t at = 0, k = 0; at < bytes; at += chunk, ++k) {
      const size_t slot = static_cast<size_t>(k % 2);
      offload::AioEngine::wait(inflight[slot]);
      const int64_t n = std::min(chunk, bytes - at);
      inflight[slot] = write ? aio.write(file, at, bufs[slot].raw(), n) : aio.read(file, at, bufs[slot].raw(), n);
    }
    for (const offload::IoTicket& t : inflight) offload::AioEngine::wait(t);
    return static_cast<double>(bytes) / seconds_since(t0);
  };
  std::vector<double> fw, fr, ow, orr;
  for (int round = 0; round < 3; ++round) {
    if (round % 2 == 0) {
      fw.push_back(fio_bandwidth(o, "write"));
      ow.push_back(pass(true));
      fr.push_back(fio_bandwidth(o, "read"));
      orr.push_back(pass(false));
    } else {
      ow.push_back(pass(true));
      fw.push_back(fio_bandwidth(o, "write"));
      orr.push_back(pass(false));
      fr.push_back(fio_bandwidth(o, "read"));
    }
  }
  std::filesystem::remove(std::filesystem::path(o.dir) / "ds_bench_fio.dat");
  return {median(fw), median(fr), median(ow), median(orr)};
}

// ---- training runs -----------------------------------------------------------------------------------------------

struct TrainRun {
  std::string name;
  double step_s = 0;
  zero::OptimizerStateStore::SwapStats swap;  // over the timed steps
  int64_t device_peak = 0, host_peak = 0, nvme_peak = 0, states = 0;
  double loss = 0;
};

TrainRun train(const OffloadBenchOptions& o, const std::string& name, const std::string& zero_json,
               bool checkpoint, std::optional<int64_t> device_limit) {
  TrainRun r;
  r.name = name;
  MemoryTracker tracker;
  TrackerScope scope(tracker);
  if (device_limit) tracker.set_limit(Tier::device, *device_limit);
  const nn::Gpt2Config model = nn::Gpt2Config::from_spec(o.model);
  config::DeepSpeedConfig cfg = config::parse_config(
      fmt::format(R"({{"train_micro_batch_size_per_gpu": {}, "gradient_accumulation_steps": 1,
          "optimizer": {{"type": "AdamW", "params": {{"lr": 3e-4, "betas": [0.9, 0.95], "weight_decay": 0.1}}}},
          "bf16": {{"enabled": true}}, "zero_optimization": {}}})",
                  o.micro, zero_json),
      1, "dspeed bench offload");
  cfg.activation_checkpointing.enabled = checkpoint;
  engine::Engine engine(model, cfg, o.seq_len, nullptr, 1234);
  Rng rng(7);
  auto next = [&](int32_t* in, int32_t* tg) {
    for (int i = 0; i < o.micro * o.seq_len; ++i) {
      in[i] = static_cast<int32_t>(rng.next_u64() % 50257);
      tg[i] = static_cast<int32_t>(rng.next_u64() % 50257);
    }
  };
  zero::OptimizerStateStore& store = engine.optimizer().state_store();
  std::vector<double> times;
  zero::OptimizerStateStore::SwapStats before;
  for (int s = 0; s < o.warmup + o.steps; ++s) {
    if (s == o.warmup) before = store.swap_stats();
    const auto t0 = Clock::now();
    r.loss = engine.train_batch(next).loss;
    if (s >= o.warmup) times.push_back(seconds_since(t0));
  }
  store.sync();
  r.swap = store.swap_stats().since(before);
  r.step_s = median(times);
  r.device_peak = tracker.peak(Tier::device);
  r.host_peak = tracker.peak(Tier::host);
  r.nvme_peak = tracker.peak(Tier::nvme);
  for (const Category c : {Category::param, Category::grad, Category::optimizer}) {
    for (const Tier t : {Tier::device, Tier::host, Tier::nvme}) r.states += tracker.peak(t, c);
  }
  return r;
}

std::string nvme_optimizer(const OffloadBenchOptions& o, bool pipelined) {
  return fmt::format(R"("offload_optimizer": {{"device": "nvme", "nvme_path": "{}", "pipeline_read": {},
      "pipeline_write": {}}}, "sub_group_size": {})",
                     o.dir, pipelined ? "true" : "false", pipelined ? "true" : "false", o.sub_group_size);
}

// ---- CPU Adam ----------------------------------------------------------------------------------------------------

// STREAM's triad a = b + s*c over arrays far larger than the caches: 12 bytes per element (reads of b and c, the
// write of a), median of 5, in bytes/s with the current thread count.
double triad_bandwidth() {
  const int64_t n = int64_t(1) << 26;
  Tensor ta = Tensor::zeros({n}, DType::f32, Category::workspace, Tier::host);
  Tensor tb = Tensor::zeros({n}, DType::f32, Category::workspace, Tier::host);
  Tensor tc = Tensor::zeros({n}, DType::f32, Category::workspace, Tier::host);
  float* a = ta.data<float>();
  const float* b = tb.data<float>();
  const float* c = tc.data<float>();
  std::vector<double> t;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) a[i] = b[i] + 0.5f * c[i];
    t.push_back(seconds_since(t0));
  }
  return 12.0 * static_cast<double>(n) / median(t);
}

// Our mixed-precision step (fp32 grad in, bf16 parameter out) on buffers allocated as the engine's are: median ms
// per step over 7 after 2 warm-up steps.
double our_adam_ms(int64_t numel) {
  const auto n = static_cast<size_t>(numel);
  auto buffer = [&](DType dtype, float value) {
    Tensor t = Tensor::zeros({numel}, DType::f32, Category::optimizer, Tier::host);
    std::fill_n(t.data<float>(), numel, value);
    return dtype == DType::f32 ? t : Tensor::zeros({numel}, dtype, Category::param, Tier::host);
  };
  Tensor master = buffer(DType::f32, 0.5f), grad = buffer(DType::f32, 1e-2f), m = buffer(DType::f32, 0.0f);
  Tensor v = buffer(DType::f32, 0.0f), param = buffer(DType::bf16, 0.0f);
  cpu::AdamParams p;
  p.weight_decay = 0.1f;
  std::vector<double> t;
  for (int s = 1; s <= 9; ++s) {
    p.step = s;
    const auto t0 = Clock::now();
    cpu::adamw_step_mixed(master.data<float>(), grad.raw(), DType::f32, m.data<float>(), v.data<float>(), param.raw(),
                          DType::bf16, n, p);
    if (s > 2) t.push_back(seconds_since(t0));
  }
  return 1e3 * median(t);
}

}  // namespace

std::string run_offload_bench(const OffloadBenchOptions& o) {
  omp_set_num_threads(o.threads);
  nlohmann::json out = {{"bench", "offload"}, {"dir", o.dir}, {"model", o.model}, {"threads", o.threads}};
  fmt::print("dspeed bench offload: swap directory {}, {} threads\n", o.dir, o.threads);

  Disk disk;
  if (!o.skip_fio) {
    disk = measure_disk(o);
    fmt::print("\ndisk ({} MiB each way, O_DIRECT, 1 MiB blocks, queue depth 8; medians of 3 alternating rounds)\n",
               o.fio_mib);
    fmt::print("  fio io_uring      write {:6.2f} GB/s   read {:6.2f} GB/s\n", disk.fio_write / 1e9,
               disk.fio_read / 1e9);
    fmt::print("  ours (AioEngine)  write {:6.2f} GB/s   read {:6.2f} GB/s   ({:.0f}% and {:.0f}% of fio)\n",
               disk.ours_write / 1e9, disk.ours_read / 1e9, 100 * disk.ours_write / disk.fio_write,
               100 * disk.ours_read / disk.fio_read);
    out["fio_write_gbs"] = disk.fio_write / 1e9;
    out["fio_read_gbs"] = disk.fio_read / 1e9;
    out["aio_write_gbs"] = disk.ours_write / 1e9;
    out["aio_read_gbs"] = disk.ours_read / 1e9;
  }

  auto row = [&](const TrainRun& r, const TrainRun& base) {
    fmt::print("  {:<34} step {:7.2f} s ({:4.2f}x)  device peak {:>10}  host peak {:>10}  nvme {:>10}\n", r.name,
               r.step_s, r.step_s / base.step_s, format_bytes(r.device_peak), format_bytes(r.host_peak),
               format_bytes(r.nvme_peak));
    const double moved = static_cast<double>(r.swap.bytes_read + r.swap.bytes_written) / o.steps;
    if (moved > 0) {
      const double busy = r.swap.io_busy_seconds / o.steps, stall = r.swap.stall_seconds / o.steps;
      const double fio_time = disk.fio_read > 0 ? static_cast<double>(r.swap.bytes_read) / o.steps / disk.fio_read +
                                                      static_cast<double>(r.swap.bytes_written) / o.steps /
                                                          disk.fio_write
                                                : 0.0;
      fmt::print("  {:<34} swap {}/step at {:.2f} GB/s{}; waited for {:.2f} s/step ({:.0f}% of the step)\n", "",
                 format_bytes(static_cast<int64_t>(moved)), gbs(moved, busy),
                 fio_time > 0 ? fmt::format(" ({:.0f}% of fio's rates for the same bytes)", 100 * fio_time / busy)
                              : std::string(),
                 stall, 100 * stall / r.step_s);
    }
    return nlohmann::json{{"name", r.name},
                          {"step_s", r.step_s},
                          {"vs_resident", r.step_s / base.step_s},
                          {"device_peak", r.device_peak},
                          {"host_peak", r.host_peak},
                          {"nvme_peak", r.nvme_peak},
                          {"swap_bytes_per_step", moved},
                          {"swap_busy_s_per_step", r.swap.io_busy_seconds / o.steps},
                          {"swap_wait_s_per_step", r.swap.stall_seconds / o.steps}};
  };

  if (!o.skip_train) {
    fmt::print("\nswap: {} bf16, ZeRO-1, micro {} x {} tokens, {} timed steps after {}\n", o.model, o.micro,
               o.seq_len, o.steps, o.warmup);
    const TrainRun resident = train(o, "resident", R"({"stage": 1})", false, std::nullopt);
    const TrainRun piped = train(o, "optimizer nvme, pipelined", "{\"stage\": 1, " + nvme_optimizer(o, true) + "}",
                                 false, std::nullopt);
    const TrainRun plain = train(o, "optimizer nvme, no pipeline", "{\"stage\": 1, " + nvme_optimizer(o, false) + "}",
                                 false, std::nullopt);
    out["swap"] = {row(resident, resident), row(piped, resident), row(plain, resident)};
  }

  if (!o.skip_limit) {
    const std::string z3 = R"("stage": 3, "reduce_bucket_size": 5e6, "stage3_prefetch_bucket_size": 5e6,
        "stage3_max_live_parameters": 1e7, "stage3_max_reuse_distance": 0)";
    fmt::print("\nlimit: {} bf16, ZeRO-3, activation checkpointing, --device-memory-limit {}\n", o.model,
               format_bytes(o.device_limit));
    const TrainRun resident = train(o, "resident (no limit)", "{" + z3 + "}", true, std::nullopt);
    const TrainRun cpu = train(o, "param cpu, optimizer cpu",
                               "{" + z3 + R"(, "offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "cpu"}})",
                               true, o.device_limit);
    const TrainRun nvme = train(o, "param cpu, optimizer nvme",
                                "{" + z3 + R"(, "offload_param": {"device": "cpu"}, )" + nvme_optimizer(o, true) + "}",
                                true, o.device_limit);
    fmt::print("  model states {} = {:.1f}x the device limit\n", format_bytes(resident.states),
               static_cast<double>(resident.states) / static_cast<double>(o.device_limit));
    out["limit"] = {row(resident, resident), row(cpu, resident), row(nvme, resident)};
    out["limit_states_bytes"] = resident.states;
  }

  if (!o.skip_adam) {
    const double bw = triad_bandwidth();
    const double ours = our_adam_ms(o.adam_numel);
    const double bytes = 30.0 * static_cast<double>(o.adam_numel);  // reads 16, writes 14 per parameter
    fmt::print("\nadam: {} parameters, fp32 master/moments/gradient, bf16 parameter written in the same pass\n",
               o.adam_numel);
    fmt::print("  memory bandwidth (triad)   {:6.2f} GB/s\n", bw / 1e9);
    fmt::print("  ours                       {:8.1f} ms  {:6.2f} GB/s ({:.0f}% of the triad)\n", ours,
               gbs(bytes, ours / 1e3), 100 * gbs(bytes, ours / 1e3) / (bw / 1e9));
    out["triad_gbs"] = bw / 1e9;
    out["adam_ms"] = ours;
    out["adam_gbs"] = gbs(bytes, ours / 1e3);
    if (!o.skip_torch) {
      for (const bool foreach : {false, true}) {
        const nlohmann::json t = run_child_result(fmt::format("'{}' '{}' --numel {} --threads {}{}", o.python,
                                                              o.torch_script, o.adam_numel, o.threads,
                                                              foreach ? " --foreach" : ""));
        const double ms = t.at("ms").get<double>();
        fmt::print("  torch.optim.AdamW{:<9} {:8.1f} ms  (ours {:.2f}x faster)\n", foreach ? " foreach" : "", ms,
                   ms / ours);
        out[foreach ? "torch_adamw_foreach_ms" : "torch_adamw_ms"] = ms;
      }
    }
  }

  const std::string line = out.dump();
  if (!o.json_out.empty()) std::ofstream(o.json_out, std::ios::app) << line << "\n";
  return line;
}

}  // namespace ds
