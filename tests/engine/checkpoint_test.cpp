// Checkpoints on the thread backend with the ZeRO equivalence case (tests/common/zero_case.h):
// - exact resume: 10 steps, save, a new engine loads, 10 more steps = 20 steps straight, bit for bit (losses and
//   parameters), for stages 0-3 at world 2, in fp32 and bf16;
// - moving between layouts: saved at (world 4, stage 3), loaded at (world 2, stage 1) and (world 1, stage 0), the
//   run continues on the uninterrupted single-process curve within 1e-5;
// - damaged checkpoints (a truncated, a corrupted and a missing shard, another model, no `latest`) are refused with
//   the file and the problem named; consolidation gives every parameter under its name, and PyTorch reading the
//   consolidated file computes our logits (scripts/check_consolidated.py; skipped where PyTorch is missing).
#include <gtest/gtest.h>
#include <omp.h>

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "common/zero_case.h"
#include "ds/ckpt/safetensors.h"
#include "ds/comm/local/local_comm.h"
#include "ds/engine/checkpoint.h"

using namespace ds;
using namespace ds::zero_case;
namespace fs = std::filesystem;

namespace {

struct Segment {
  std::vector<double> losses;
  std::vector<float> params;
};

// Steps [first, last) of the equivalence case on one rank; rank r of world N reads its rows of each global batch.
void train_steps(engine::Engine& engine, comm::Communicator& comm, int first, int last, Segment& out) {
  const int micro = kGlobalRows / comm.size();
  int step = first;
  auto next = [&](int32_t* in, int32_t* tg) { table().fill(kGlobalRows * step + comm.rank() * micro, micro, in, tg); };
  for (step = first; step < last; ++step) out.losses.push_back(engine.train_batch(next).loss);
}

config::DeepSpeedConfig config_for(int stage, int world, bool bf16 = false) {
  std::string text = config_json(stage, kGlobalRows / world, 1, false);
  if (bf16) text.insert(text.find('{') + 1, R"("bf16": {"enabled": true}, )");
  return config::parse_config(text, world, "checkpoint_test");
}

// Runs `fn(comm)` on every rank of a thread world, each with its own tracker and a share of the cores.
template <typename F>
void on_world(int world, F fn) {
  std::vector<MemoryTracker> trackers(static_cast<size_t>(world));
  comm::run_local_world(world, [&](comm::Communicator& comm) {
    omp_set_num_threads(std::max(1, omp_get_num_procs() / comm.size()));
    TrackerScope scope(trackers[static_cast<size_t>(comm.rank())]);
    fn(comm);
  });
}

class TempDir {
 public:
  TempDir() : path_(fs::temp_directory_path() / fmt::format("dspeed-ckpt-test-{}-{}", ::getpid(), counter_++)) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string str() const { return path_.string(); }
  fs::path path() const { return path_; }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

// Straight for 20 steps, and 10 + save + load in a new engine + 10, at one stage and world.
void expect_exact_resume(int stage, int world, bool bf16 = false) {
  TempDir dir;
  Segment straight, resumed;
  on_world(world, [&](comm::Communicator& comm) {
    Segment s;
    engine::Engine engine(tiny(), config_for(stage, world, bf16), kT, &comm, 42);
    EXPECT_EQ(engine.optimizer().precision().params, bf16 ? DType::bf16 : DType::f32);
    train_steps(engine, comm, 0, kSteps, s);
    s.params = engine.optimizer().full_parameters();
    if (comm.rank() == 0) straight = s;
  });
  on_world(world, [&](comm::Communicator& comm) {
    Segment first;
    engine::Engine engine(tiny(), config_for(stage, world, bf16), kT, &comm, 42);
    train_steps(engine, comm, 0, kSteps / 2, first);
    EXPECT_EQ(engine.save_checkpoint(dir.str(), "", {{"note", "half way"}}), "global_step10");
  });
  on_world(world, [&](comm::Communicator& comm) {
    Segment second;
    engine::Engine engine(tiny(), config_for(stage, world, bf16), kT, &comm,
                          7);  // another seed: all comes from the file
    const nlohmann::json client = engine.load_checkpoint(dir.str());
    EXPECT_EQ(client.value("note", ""), "half way");
    EXPECT_EQ(engine.global_steps(), kSteps / 2);
    train_steps(engine, comm, kSteps / 2, kSteps, second);
    second.params = engine.optimizer().full_parameters();
    if (comm.rank() == 0) resumed = second;
  });
  const std::string what = fmt::format("stage {} world {}{}", stage, world, bf16 ? " bf16" : "");
  ASSERT_EQ(resumed.losses.size(), size_t(kSteps / 2)) << what;
  for (int i = 0; i < kSteps / 2; ++i) EXPECT_EQ(resumed.losses[i], straight.losses[kSteps / 2 + i]) << what << i;
  ASSERT_EQ(resumed.params.size(), straight.params.size()) << what;
  EXPECT_TRUE(resumed.params == straight.params) << what << ": parameters differ after resuming";
}

TEST(Checkpoint, ResumeIsBitIdenticalForEveryStage) {
  for (int stage : {0, 1, 2, 3}) expect_exact_resume(stage, 2);
}

TEST(Checkpoint, Bf16ResumeIsBitIdenticalForEveryStage) {
  for (int stage : {0, 1, 2, 3}) expect_exact_resume(stage, 2, true);
}

TEST(Checkpoint, LoadsAtAnotherWorldSizeAndStageOnTheSameCurve) {
  // The uninterrupted single-process stage-0 run.
  Segment ref;
  on_world(1, [&](comm::Communicator& comm) {
    engine::Engine engine(tiny(), config_for(0, 1), kT, &comm, 42);
    train_steps(engine, comm, 0, kSteps, ref);
    ref.params = engine.optimizer().full_parameters();
  });
  TempDir dir;
  on_world(4, [&](comm::Communicator& comm) {
    Segment s;
    engine::Engine engine(tiny(), config_for(3, 4), kT, &comm, 42);
    train_steps(engine, comm, 0, kSteps / 2, s);
    engine.save_checkpoint(dir.str(), "w4s3");
  });
  for (auto [world, stage] : {std::pair{2, 1}, std::pair{1, 0}, std::pair{4, 2}}) {
    Segment got;
    // Init-captures: Clang before 16 cannot capture a structured binding (P1091R3).
    on_world(world, [&, world = world, stage = stage](comm::Communicator& comm) {
      Segment s;
      engine::Engine engine(tiny(), config_for(stage, world), kT, &comm, 42);
      engine.load_checkpoint(dir.str(), "w4s3");
      train_steps(engine, comm, kSteps / 2, kSteps, s);
      s.params = engine.optimizer().full_parameters();
      if (comm.rank() == 0) got = s;
    });
    const std::string what = fmt::format("world 4 stage 3 -> world {} stage {}", world, stage);
    ASSERT_EQ(got.losses.size(), size_t(kSteps / 2)) << what;
    for (int i = 0; i < kSteps / 2; ++i)
      EXPECT_NEAR(got.losses[i], ref.losses[kSteps / 2 + i], 1e-5 * std::fabs(ref.losses[kSteps / 2 + i])) << what;
    double max_diff = 0, max_abs = 0;
    for (size_t i = 0; i < ref.params.size(); ++i) {
      max_diff = std::max(max_diff, double(std::fabs(got.params[i] - ref.params[i])));
      max_abs = std::max(max_abs, double(std::fabs(ref.params[i])));
    }
    EXPECT_LE(max_diff / max_abs, 1e-5) << what;
  }
}

// Saves the tiny model once (world 2, stage 2: two shards) into dir/t.
void save_two_shards(const std::string& dir) {
  on_world(2, [&](comm::Communicator& comm) {
    Segment s;
    engine::Engine engine(tiny(), config_for(2, 2), kT, &comm, 42);
    train_steps(engine, comm, 0, 2, s);
    engine.save_checkpoint(dir, "t");
  });
}

std::string load_error(const std::string& dir, const nn::Gpt2Config& model = tiny()) {
  try {
    engine::Engine engine(model, config_for(0, 1), kT, nullptr, 42);
    engine.load_checkpoint(dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Checkpoint, DamagedOrForeignCheckpointsAreRefusedByName) {
  TempDir dir;
  save_two_shards(dir.str());
  const fs::path shard = dir.path() / "t" / "rank_00001.safetensors";
  ASSERT_TRUE(fs::exists(shard));
  ASSERT_EQ(load_error(dir.str()), "");  // intact: loads at world 1 stage 0

  {  // a flipped byte in the middle of the data
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(fs::file_size(shard) / 2));
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x40);
    f.seekp(static_cast<std::streamoff>(fs::file_size(shard) / 2));
    f.write(&c, 1);
  }
  std::string e = load_error(dir.str());
  EXPECT_NE(e.find("rank_00001.safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find("CRC-32"), std::string::npos) << e;

  fs::resize_file(shard, fs::file_size(shard) - 100);  // truncated
  e = load_error(dir.str());
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;

  fs::remove(shard);  // missing
  e = load_error(dir.str());
  EXPECT_NE(e.find("rank_00001.safetensors' is missing"), std::string::npos) << e;

  TempDir other;
  save_two_shards(other.str());
  nn::Gpt2Config two_layers = tiny();
  two_layers.n_layer = 2;
  e = load_error(other.str(), two_layers);
  EXPECT_NE(e.find("from another model"), std::string::npos) << e;

  TempDir empty;
  e = load_error(empty.str());
  EXPECT_NE(e.find("no 'latest' file"), std::string::npos) << e;
}

TEST(Checkpoint, ConsolidatedFileHoldsEveryParameterAndLoadsBack) {
  TempDir dir;
  std::vector<float> saved;
  on_world(2, [&](comm::Communicator& comm) {
    Segment s;
    engine::Engine engine(tiny(), config_for(3, 2), kT, &comm, 42);
    train_steps(engine, comm, 0, 3, s);
    engine.save_checkpoint(dir.str(), "t");
    const std::vector<float> p = engine.optimizer().full_parameters();
    if (comm.rank() == 0) saved = p;
  });
  const std::string out = (dir.path() / "model.safetensors").string();
  ckpt::consolidate_checkpoint(ckpt::CheckpointReader(dir.str(), "t"), out, "fp32");
  const ckpt::SafetensorsFile file = ckpt::SafetensorsFile::open(out);
  engine::Engine engine(tiny(), config_for(0, 1), kT, nullptr, 7);
  ASSERT_EQ(file.size(), engine.model().params().all().size());
  std::vector<float> concatenated;
  for (const nn::Parameter& p : engine.model().params().all()) {
    const std::vector<float> v = ckpt::read_safetensors_f32(file, p.name);
    EXPECT_EQ(file.get(p.name).shape, std::vector<int64_t>(p.shape.begin(), p.shape.end())) << p.name;
    concatenated.insert(concatenated.end(), v.begin(), v.end());
  }
  EXPECT_TRUE(concatenated == saved);
  engine.load_weights(out);
  EXPECT_TRUE(engine.optimizer().full_parameters() == saved);
}

}  // namespace

namespace {

// The consolidated file read by PyTorch: scripts/check_consolidated.py loads it with a plain safetensors reader into
// the op-by-op GPT-2 of scripts/gen_fixtures.py and compares its logits with ours (skipped without PyTorch).
TEST(Checkpoint, ConsolidatedFileGivesOurLogitsInPyTorch) {
  TempDir dir;
  on_world(2, [&](comm::Communicator& comm) {
    Segment s;
    engine::Engine engine(tiny(), config_for(3, 2), kT, &comm, 42);
    train_steps(engine, comm, 0, 3, s);
    engine.save_checkpoint(dir.str(), "t");
  });
  const std::string model = (dir.path() / "model.safetensors").string();
  ckpt::consolidate_checkpoint(ckpt::CheckpointReader(dir.str(), "t"), model, "fp32");
  engine::Engine engine(tiny(), config_for(0, 1), kT, nullptr, 7);
  engine.load_weights(model);
  const int B = 2, V = tiny().vocab_size;
  std::vector<int32_t> tokens(size_t(B) * kT), targets(tokens.size());
  table().fill(0, B, tokens.data(), targets.data());
  std::vector<float> logits(tokens.size() * V);
  nn::Ctx ctx;
  engine.model().forward_logits(ctx, tokens.data(), B, kT, logits.data());
  const std::string expected = (dir.path() / "expected.safetensors").string();
  ckpt::write_safetensors(expected, {{"tokens", "I32", {B, kT}, tokens.data(), tokens.size() * 4},
                               {"logits", "F32", {B, kT, V}, logits.data(), logits.size() * 4}});
  const std::string cmd = fmt::format("/usr/bin/python3 {}/scripts/check_consolidated.py {} {} {} {} 1e-4",
                                      DS_SOURCE_DIR, model, expected, tiny().n_layer, tiny().n_head);
  const int rc = std::system(cmd.c_str());
  if (WIFEXITED(rc) && WEXITSTATUS(rc) == 77) GTEST_SKIP() << "PyTorch is not installed";
  EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << cmd;
}

}  // namespace
