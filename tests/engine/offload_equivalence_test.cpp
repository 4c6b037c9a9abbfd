// ZeRO-Offload and ZeRO-Infinity change where the state lives, not the arithmetic: the tiny GPT-2 of the ZeRO
// equivalence case, trained with offload_optimizer 'cpu' or 'nvme' (and offload_param 'cpu' at stage 3), gives
// bit-identical losses and final parameters to the resident run at the same stage and world size (stages 1-3,
// worlds 1 and 2, fp32 and bf16), with the state in the tier the config names: none of the optimizer state in the
// device tier, the moments and master weights in the host tier ('cpu') or in the nvme tier ('nvme', with only the
// swap buffers in host memory).
#include <gtest/gtest.h>

#include <filesystem>

#include "common/local_ranks.h"
#include "common/scratch_dir.h"
#include "common/zero_case.h"

using namespace ds;

namespace {

using namespace zero_case;

struct Tiers {
  RunResult run;
  int64_t device_optimizer = 0, host_optimizer = 0, nvme_optimizer = 0, host_param = 0, device_param = 0;
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
            // The swap file holds the moments in 4 KiB-aligned tiles; host memory holds only the buffers.
            EXPECT_GE(t.nvme_optimizer, resident[static_cast<size_t>(r)].device_optimizer) << what;
            EXPECT_LT(t.host_optimizer, t.nvme_optimizer) << what;
          }
        }
      }
    }
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir_)) << "swap files outlived the runs";
}

TEST_F(Offload, Stage3ParameterAndOptimizerOffloadInBf16) {
  const std::string bf16 = R"(}, "bf16": {"enabled": true)";  // closes zero_optimization, opens bf16
  for (const int world : {1, 2}) {
    const std::vector<Tiers> resident = run_world(world, 3, bf16);
    for (const std::string device : {"cpu", "nvme"}) {
      const std::string what = fmt::format("bf16 stage 3 world {} offload_optimizer {}", world, device);
      const std::vector<Tiers> off =
          run_world(world, 3, optimizer_block(device) + R"(, "offload_param": {"device": "cpu"})" + bf16);
      for (int r = 0; r < world; ++r) {
        const Tiers& t = off[static_cast<size_t>(r)];
        expect_identical(t.run, resident[static_cast<size_t>(r)].run, what);
        EXPECT_EQ(t.device_param, 0) << what;
        EXPECT_EQ(t.host_param, resident[static_cast<size_t>(r)].device_param) << what;
      }
    }
  }
}

}  // namespace
