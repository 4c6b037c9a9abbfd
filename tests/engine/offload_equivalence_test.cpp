// ZeRO-Offload and ZeRO-Infinity change where the state lives, not the arithmetic: the tiny GPT-2 of the ZeRO
// equivalence case, trained with offload_optimizer 'cpu' or 'nvme' (and offload_param 'cpu' or 'nvme' at stage 3), gives
// bit-identical losses and final parameters to the resident run at the same stage and world size (stages 1-3,
// worlds 1 and 2, fp32 and bf16), with the state in the tier the config names: none of the optimizer state in the
// device tier, the moments and master weights in the host tier ('cpu') or in the nvme tier ('nvme', with only the
// swap buffers in host memory).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "common/local_ranks.h"
#include "common/scratch_dir.h"
#include "common/zero_case.h"
#include "ds/offload/aio.h"

using namespace ds;

namespace {

using namespace zero_case;

struct Tiers {
  RunResult run;
  int64_t device_optimizer = 0, host_optimizer = 0, nvme_optimizer = 0, host_param = 0, device_param = 0;
  int64_t nvme_param = 0;
};

std::vector<Tiers> run_world(int world, int stage, const std::string& extra) {
  return ds::testing::on_local_ranks<Tiers>(world, [&](comm::Communicator& comm) {
    Tiers t;
    t.run = run_case(comm, stage, kGlobalRows / world, 1, false, extra);
    const MemoryTracker& m = current_tracker();
    t.device_optimizer = m.peak(Tier::device, Category::optimizer);
    t.host_optimizer = m.peak(Tier::host, Category::optimizer);
    t.nvme_optimizer = m.peak(Tier::nvme, Category::optimizer);
    t.host_param = m.peak(Tier::host, Category::param);
    t.device_param = m.peak(Tier::device, Category::param);
    t.nvme_param = m.peak(Tier::nvme, Category::param);
    return t;
  });
}

class Offload : public test::ScratchDirTest {
 protected:
  std::string optimizer_block(const std::string& device) const {
    if (device == "cpu") return R"(, "offload_optimizer": {"device": "cpu"})";
    return fmt::format(R"(, "offload_optimizer": {{"device": "nvme", "nvme_path": "{}", "pipeline_read": true,
                            "pipeline_write": true}}, "sub_group_size": 20000)",
                       dir_.string());
  }
};

void expect_identical(const RunResult& got, const RunResult& ref, const std::string& what) {
  EXPECT_EQ(got.losses, ref.losses) << what;
  EXPECT_EQ(got.params, ref.params) << what;
}

TEST_F(Offload, OptimizerOffloadIsBitIdenticalToTheResidentRun) {
  for (const int stage : {1, 2, 3}) {
    for (const int world : {1, 2}) {
      const std::vector<Tiers> resident = run_world(world, stage, "");
      for (const std::string device : {"cpu", "nvme"}) {
        const std::string what = fmt::format("stage {} world {} offload_optimizer {}", stage, world, device);
        const std::vector<Tiers> off = run_world(world, stage, optimizer_block(device));
        for (int r = 0; r < world; ++r) {
          const Tiers& t = off[static_cast<size_t>(r)];
          expect_identical(t.run, resident[static_cast<size_t>(r)].run, what);
          EXPECT_EQ(t.device_optimizer, 0) << what;
          EXPECT_GT(resident[static_cast<size_t>(r)].device_optimizer, 0) << what;
          if (device == "cpu") {
            EXPECT_EQ(t.host_optimizer, resident[static_cast<size_t>(r)].device_optimizer) << what;
            EXPECT_EQ(t.nvme_optimizer, 0) << what;
          } else {
            // The swap file holds the state in tiles of 20,000 elements (80 KB) rounded up to 4 KiB each: at most 5%
            // more. Host memory holds only the swap buffers (comm_buffer).
            EXPECT_GE(t.nvme_optimizer, resident[static_cast<size_t>(r)].device_optimizer) << what;
            EXPECT_LT(t.nvme_optimizer, resident[static_cast<size_t>(r)].device_optimizer * 1.05) << what;
            EXPECT_EQ(t.host_optimizer, 0) << what;
          }
        }
      }
    }
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir_)) << "swap files outlived the runs";
}

TEST_F(Offload, Stage3ParameterAndOptimizerOffloadInBf16) {
  const std::string bf16 = R"(}, "bf16": {"enabled": true)";  // closes zero_optimization, opens bf16
  // offload_param 'nvme' with 3 buffers: the tiny model has more units than that, so chunks are swapped out and
  // read back every step.
  const std::string param_nvme = fmt::format(
      R"(, "offload_param": {{"device": "nvme", "nvme_path": "{}", "buffer_count": 3}})", dir_.string());
  for (const int world : {1, 2}) {
    const std::vector<Tiers> resident = run_world(world, 3, bf16);
    for (const std::string params : {"cpu", "nvme"}) {
      for (const std::string device : {"cpu", "nvme"}) {
        const std::string what =
            fmt::format("bf16 stage 3 world {} offload_param {} offload_optimizer {}", world, params, device);
        const std::string param_block = params == "cpu" ? R"(, "offload_param": {"device": "cpu"})" : param_nvme;
        const std::vector<Tiers> off = run_world(world, 3, optimizer_block(device) + param_block + bf16);
        for (int r = 0; r < world; ++r) {
          const Tiers& t = off[static_cast<size_t>(r)];
          expect_identical(t.run, resident[static_cast<size_t>(r)].run, what);
          EXPECT_EQ(t.device_param, 0) << what;
          if (params == "cpu") {
            EXPECT_EQ(t.host_param, resident[static_cast<size_t>(r)].device_param) << what;
          } else {
            EXPECT_EQ(t.host_param, 0) << what;  // only the swap buffers, as comm_buffer
            EXPECT_GE(t.nvme_param, resident[static_cast<size_t>(r)].device_param) << what;
          }
        }
      }
    }
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir_)) << "swap files outlived the runs";
}

// A checkpoint written through the swap file resumes without offload, and one written without offload resumes with
// it: both continue on the uninterrupted run's curve, bit for bit.
TEST_F(Offload, CheckpointsMoveBetweenOffloadedAndResidentRuns) {
  const std::string swap_dir = path("swap");
  std::filesystem::create_directory(swap_dir);
  auto config = [&](bool offload) {
    const std::string extra =
        offload ? fmt::format(R"(, "offload_optimizer": {{"device": "nvme", "nvme_path": "{}"}}, "sub_group_size": 30000)",
                              swap_dir)
                : "";
    return config::parse_config(config_json(2, kGlobalRows, 1, false, extra), 1, "offload checkpoint");
  };
  auto train = [&](engine::Engine& e, int from, int to, std::vector<double>& losses) {
    for (int step = from; step < to; ++step) {
      losses.push_back(e.train_batch([&](int32_t* in, int32_t* tg) {
        table().fill(kGlobalRows * step, kGlobalRows, in, tg);
      }).loss);
    }
  };
  std::vector<double> whole_losses;
  engine::Engine whole(tiny(), config(true), kT, nullptr, 42);
  train(whole, 0, 5, whole_losses);
  const std::vector<float> want = whole.optimizer().full_parameters();
  for (const bool saved_offloaded : {true, false}) {
    const std::string dir = path(saved_offloaded ? "from_nvme" : "from_resident");
    std::vector<double> losses;
    {
      engine::Engine first(tiny(), config(saved_offloaded), kT, nullptr, 42);
      train(first, 0, 3, losses);
      first.save_checkpoint(dir);
    }
    engine::Engine second(tiny(), config(!saved_offloaded), kT, nullptr, 7);
    second.load_checkpoint(dir);
    train(second, 3, 5, losses);
    EXPECT_EQ(losses, whole_losses) << (saved_offloaded ? "nvme -> resident" : "resident -> nvme");
    EXPECT_EQ(second.optimizer().full_parameters(), want) << (saved_offloaded ? "nvme -> resident" : "resident -> nvme");
  }
}

TEST_F(Offload, AnIoErrorMidStepStopsTheRunAndKeepsTheLastCheckpoint) {
  const std::string swap_dir = path("swap"), ckpt_dir = path("ckpt");
  std::filesystem::create_directory(swap_dir);
  auto config = [&](bool offload) {
    const std::string extra =
        offload ? fmt::format(R"(, "offload_optimizer": {{"device": "nvme", "nvme_path": "{}", "pipeline_read": true,
                                 "pipeline_write": true}}, "sub_group_size": 20000)", swap_dir)
                : "";
    return config::parse_config(config_json(2, kGlobalRows, 1, false, extra), 1, "offload fault");
  };
  int step = 0;
  auto next = [&](int32_t* in, int32_t* tg) { table().fill(kGlobalRows * step, kGlobalRows, in, tg); };
  engine::Engine run(tiny(), config(true), kT, nullptr, 42);
  for (step = 0; step < 2; ++step) run.train_batch(next);
  const std::string saved = run.save_checkpoint(ckpt_dir);
  const std::vector<float> saved_params = run.optimizer().full_parameters();
  offload::inject_io_fault({/*on_write=*/true, /*after_bytes=*/100000, /*error=*/EIO, false});
  try {
    for (; step < 5; ++step) run.train_batch(next);
    run.save_checkpoint(ckpt_dir);
    ADD_FAILURE() << "the run went on after an I/O error";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(swap_dir), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Input/output error"), std::string::npos) << e.what();
  }
  offload::clear_io_fault();
  EXPECT_THROW(run.save_checkpoint(ckpt_dir), IoError);  // the state is lost: no checkpoint from it
  std::vector<std::string> tags;
  for (const auto& e : std::filesystem::directory_iterator(ckpt_dir)) tags.push_back(e.path().filename().string());
  std::sort(tags.begin(), tags.end());
  EXPECT_EQ(tags, (std::vector<std::string>{saved, "latest"}));
  // The last checkpoint loads, without offload, and holds the state it was saved with.
  engine::Engine resumed(tiny(), config(false), kT, nullptr, 7);
  resumed.load_checkpoint(ckpt_dir);
  EXPECT_EQ(resumed.global_steps(), 2);
  EXPECT_EQ(resumed.optimizer().full_parameters(), saved_params);
}

}  // namespace
