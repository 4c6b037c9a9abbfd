// Tests of the launcher: DeepSpeed's hostfile rules and its include/exclude cases (tests/unit/launcher/test_run.py
// cases, with their expected lists as literals), the mpirun command line a plan produces, and run_launch's exit
// status. Plans are built from an injected environment, core count and uid, and a fake launcher binary, so the
// tests neither need mpirun nor depend on the machine they run on.
#include "ds/app/launcher.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <utility>

#include "ds/core/error.h"
#include "ds/core/log.h"

namespace ds {
namespace {

namespace fs = std::filesystem;

// Runs `fn` expecting an exception of type E whose message starts with "[launch]" and holds every fragment.
template <typename E, typename Fn>
std::string expect_error(Fn&& fn, std::initializer_list<std::string> fragments) {
  try {
    fn();
  } catch (const E& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("[launch]", 0), 0u) << msg;
    for (const auto& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << "missing '" << f << "' in: " << msg;
    return msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
    return "";
  }
  ADD_FAILURE() << "no exception";
  return "";
}

std::vector<app::HostSlots> parse(const std::string& text) { return app::parse_hostfile(text, "hf"); }

bool has_pair(const std::vector<std::string>& argv, const std::string& a, const std::string& b) {
  for (size_t i = 0; i + 1 < argv.size(); ++i)
    if (argv[i] == a && argv[i + 1] == b) return true;
  return false;
}

bool has(const std::vector<std::string>& argv, const std::string& a) {
  return std::find(argv.begin(), argv.end(), a) != argv.end();
}

class LauncherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    set_log_level(LogLevel::error);
    std::string tmpl = (fs::temp_directory_path() / "ds_launcher_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    fake_mpirun_ = write("bin/mpirun", "#!/bin/sh\nexit 0\n");
    ::chmod(fake_mpirun_.c_str(), 0755);
  }
  void TearDown() override {
    fs::remove_all(dir_);
    set_log_level(LogLevel::info);
  }

  std::string write(const std::string& name, const std::string& text) {
    const fs::path p = fs::path(dir_) / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
    return p.string();
  }

  // Options that see only what the test gives them: no real hostfile, environment, home or mpirun.
  app::LaunchOptions options(std::vector<std::string> command = {"./train", "--steps", "2"}) {
    app::LaunchOptions o;
    o.command = std::move(command);
    o.environment = std::map<std::string, std::string>{{"PATH", dir_ + "/bin"}, {"HOME", dir_ + "/home"}};
    o.cores = 8;
    o.as_root = false;
    o.default_hostfile = dir_ + "/no_default_hostfile";
    o.env_file_dirs = {dir_ + "/cwd"};
    return o;
  }

  std::string dir_;
  std::string fake_mpirun_;
};

// ---- hostfile -------------------------------------------------------------------------------------------------

TEST_F(LauncherTest, HostfileWithCommentsAndBlankLines) {
  const auto hosts = parse(
      "# the cluster\n"
      "worker-1 slots=2\n"
      "worker-2 slots=4   # the big one\n"
      "\n"
      "localhost   slots=1\n"
      "   # indented comment\n"
      "worker-3\tslots=3 max_slots=8\n");  // trailing tokens ignored, as DeepSpeed's unanchored regex does
  const std::vector<app::HostSlots> want = {
      {"worker-1", {0, 1}}, {"worker-2", {0, 1, 2, 3}}, {"localhost", {0}}, {"worker-3", {0, 1, 2}}};
  EXPECT_EQ(hosts, want);
}

TEST_F(LauncherTest, HostfileBadLineNamesLineAndForm) {
  expect_error<ConfigError>([] { parse("worker-1 slots=2\n\nworker-2 slot=2\n"); },
                            {"hf:3", "'worker-2 slot=2'", "<host> slots=<N>"});
  expect_error<ConfigError>([] { parse("worker-1\n"); }, {"hf:1", "'worker-1'", "<host> slots=<N>"});
  expect_error<ConfigError>([] { parse("worker-1 slots=two\n"); }, {"hf:1", "slots=two"});
  expect_error<ConfigError>([] { parse("worker-1 slots=-1\n"); }, {"hf:1"});
  expect_error<ConfigError>([] { parse("worker-1 slots=99999999999999\n"); }, {"hf:1", "too large"});
}

TEST_F(LauncherTest, HostfileDuplicateHost) {
  expect_error<ConfigError>([] { parse("worker-1 slots=2\nworker-2 slots=2\nworker-1 slots=4\n"); },
                            {"hf:3", "'worker-1'", "line 1"});
}

TEST_F(LauncherTest, HostfileEmpty) {
  expect_error<ConfigError>([] { parse(""); }, {"hf", "no hosts"});
  expect_error<ConfigError>([] { parse("# only a comment\n\n   \n"); }, {"hf", "no hosts"});
}

TEST_F(LauncherTest, HostfileZeroSlots) {
  expect_error<ConfigError>([] { parse("worker-1 slots=2\nworker-2 slots=0\n"); }, {"hf:2", "worker-2", "slots=0"});
}

TEST_F(LauncherTest, LoadHostfileMissingExplicitVersusDefault) {
  const std::string missing = dir_ + "/nothing_here";
  expect_error<IoError>([&] { app::load_hostfile(missing, true); }, {missing, "does not exist"});
  EXPECT_FALSE(app::load_hostfile(missing, false).has_value());
  expect_error<IoError>([&] { app::load_hostfile(dir_, true); }, {"not a regular file"});
  const std::string path = write("hostfile", "worker-0 slots=2\n");
  const auto hosts = app::load_hostfile(path, true);
  ASSERT_TRUE(hosts.has_value());
  EXPECT_EQ(*hosts, (std::vector<app::HostSlots>{{"worker-0", {0, 1}}}));
  expect_error<ConfigError>([&] { app::load_hostfile(write("bad", "oops\n"), false); }, {"bad:1", "'oops'"});
}

// ---- include / exclude (DeepSpeed's test_run.py cases) --------------------------------------------------------

TEST_F(LauncherTest, FilterSingleHost) {
  const std::vector<app::HostSlots> hosts = {{"worker-0", {0, 1, 2, 3}}};
  using V = std::vector<app::HostSlots>;
  EXPECT_EQ(app::apply_include_exclude(hosts, "worker-0:1", ""), (V{{"worker-0", {1}}}));
  EXPECT_EQ(app::apply_include_exclude(hosts, "", "worker-0:1"), (V{{"worker-0", {0, 2, 3}}}));
  EXPECT_EQ(app::apply_include_exclude(hosts, "worker-0:0,1", ""), (V{{"worker-0", {0, 1}}}));
  EXPECT_EQ(app::apply_include_exclude(hosts, "", "worker-0:0,1"), (V{{"worker-0", {2, 3}}}));
  EXPECT_EQ(app::apply_include_exclude(hosts, "worker-0:0,1,2", ""), (V{{"worker-0", {0, 1, 2}}}));
  EXPECT_EQ(app::apply_include_exclude(hosts, "worker-0:2,0,2", ""), (V{{"worker-0", {0, 2}}}));  // sorted, unique
  EXPECT_EQ(app::apply_include_exclude(hosts, "", ""), hosts);
}

TEST_F(LauncherTest, FilterMultiNode) {
  const std::vector<app::HostSlots> hosts = {{"worker-0", {0, 1, 2, 3}}, {"worker-1", {0, 1, 2, 3}}};
  using V = std::vector<app::HostSlots>;
  EXPECT_EQ(app::apply_include_exclude(hosts, "worker-0", ""), (V{{"worker-0", {0, 1, 2, 3}}}));
  EXPECT_EQ(app::apply_include_exclude(hosts, "", "worker-0"), (V{{"worker-1", {0, 1, 2, 3}}}));
  EXPECT_EQ(app::apply_include_exclude(hosts, "worker-0@worker-1:1", ""),
            (V{{"worker-0", {0, 1, 2, 3}}, {"worker-1", {1}}}));
  EXPECT_EQ(app::apply_include_exclude(hosts, "", "worker-0@worker-1:1"), (V{{"worker-1", {0, 2, 3}}}));
  EXPECT_EQ(app::apply_include_exclude(hosts, "worker-0@worker-1:0,2", ""),
            (V{{"worker-0", {0, 1, 2, 3}}, {"worker-1", {0, 2}}}));
  // Order follows the hostfile, not the spec, so ranks land on hosts as DeepSpeed places them.
  EXPECT_EQ(app::apply_include_exclude(hosts, "worker-1:3@worker-0:2", ""), (V{{"worker-0", {2}}, {"worker-1", {3}}}));
}

TEST_F(LauncherTest, FilterErrors) {
  const std::vector<app::HostSlots> hosts = {{"worker-0", {0, 1, 2, 3}}, {"worker-1", {0, 1, 2, 3}}};
  expect_error<ConfigError>([&] { app::apply_include_exclude(hosts, "worker-0", "worker-1"); },
                            {"--include", "--exclude"});
  // (include, exclude) cases, looped over whole: Clang before 16 cannot capture a structured binding (P1091R3).
  using Spec = std::pair<std::string, std::string>;
  for (const Spec& spec : {Spec{"jeff", ""}, Spec{"", "jeff"}})
    expect_error<ConfigError>([&] { app::apply_include_exclude(hosts, spec.first, spec.second); },
                              {"'jeff'", "worker-0 (slots 0-3)", "worker-1 (slots 0-3)"});
  for (const Spec& spec : {Spec{"worker-1:4", ""}, Spec{"", "worker-1:4"}})
    expect_error<ConfigError>([&] { app::apply_include_exclude(hosts, spec.first, spec.second); },
                              {"slot 4", "'worker-1'", "0-3"});
  for (const Spec& spec : {Spec{"worker-1@:1", ""}, Spec{"", "worker-1@:1"}})
    expect_error<ConfigError>([&] { app::apply_include_exclude(hosts, spec.first, spec.second); },
                              {"empty host", "NODE_SPEC"});
  expect_error<ConfigError>([&] { app::apply_include_exclude(hosts, "worker-1:a", ""); }, {"'a' is not a slot number"});
  expect_error<ConfigError>([&] { app::apply_include_exclude(hosts, "worker-1:", ""); }, {"'' is not a slot number"});
  expect_error<ConfigError>([&] { app::apply_include_exclude(hosts, "", "worker-0@worker-1"); }, {"leaves no hosts"});
}

TEST_F(LauncherTest, NodeSpecRoundTrip) {
  const std::vector<app::HostSlots> hosts = {{"a", {0, 1}}, {"b", {2}}};
  EXPECT_EQ(app::format_node_specs(hosts), "a:0,1@b:2");
  EXPECT_EQ(app::parse_node_specs("a:0,1@b:2", "-i"), hosts);
}

// ---- plans ----------------------------------------------------------------------------------------------------

TEST_F(LauncherTest, PlanLocalRanks) {
  app::LaunchOptions o = options();
  o.num_procs = 4;
  const app::LaunchPlan p = app::plan_launch(o);
  EXPECT_EQ(p.world_size, 4);
  EXPECT_EQ(p.argv[0], fake_mpirun_);  // found on the injected PATH
  EXPECT_TRUE(has_pair(p.argv, "-n", "4"));
  EXPECT_FALSE(has(p.argv, "--hostfile"));
  EXPECT_TRUE(p.hostfile_path.empty());
  EXPECT_TRUE(has_pair(p.argv, "--bind-to", "none"));
  EXPECT_TRUE(has(p.argv, "--oversubscribe"));
  EXPECT_TRUE(has_pair(p.argv, "orte_abort_on_non_zero_status", "1"));
  EXPECT_FALSE(has(p.argv, "--allow-run-as-root"));
  EXPECT_EQ(p.env.count("OMPI_ALLOW_RUN_AS_ROOT"), 0u);
  // The user command follows "--" unchanged.
  const std::vector<std::string> tail(p.argv.end() - 4, p.argv.end());
  EXPECT_EQ(tail, (std::vector<std::string>{"--", "./train", "--steps", "2"}));
  // 8 cores over 4 local ranks.
  EXPECT_EQ(p.threads_per_rank, 2);
  EXPECT_EQ(p.env.at("OMP_NUM_THREADS"), "2");
  EXPECT_TRUE(has_pair(p.argv, "-x", "OMP_NUM_THREADS"));
  EXPECT_EQ(p.env.at("DS_WORLD_INFO"), "localhost:0,1,2,3");
}

TEST_F(LauncherTest, PlanDefaultIsOneRankWithAllCores) {
  const app::LaunchPlan p = app::plan_launch(options());
  EXPECT_EQ(p.world_size, 1);
  EXPECT_TRUE(has_pair(p.argv, "-n", "1"));
  EXPECT_EQ(p.threads_per_rank, 8);
}

TEST_F(LauncherTest, PlanThreadSplitNeverBelowOne) {
  app::LaunchOptions o = options();
  o.cores = 2;
  o.num_procs = 3;
  EXPECT_EQ(app::plan_launch(o).threads_per_rank, 1);
  o.cores = 7;
  o.num_procs = 2;
  EXPECT_EQ(app::plan_launch(o).threads_per_rank, 3);
}

TEST_F(LauncherTest, PlanRootFlags) {
  app::LaunchOptions o = options();
  o.as_root = true;
  const app::LaunchPlan p = app::plan_launch(o);
  EXPECT_TRUE(has(p.argv, "--allow-run-as-root"));
  EXPECT_EQ(p.env.at("OMPI_ALLOW_RUN_AS_ROOT"), "1");
  EXPECT_EQ(p.env.at("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"), "1");
}

TEST_F(LauncherTest, PlanKeepsUserThreadsAndExportsSettings) {
  app::LaunchOptions o = options();
  o.num_procs = 2;
  (*o.environment)["OMP_NUM_THREADS"] = "3";
  (*o.environment)["OMP_WAIT_POLICY"] = "PASSIVE";
  (*o.environment)["DS_ACCELERATOR"] = "cpu";
  (*o.environment)["NCCL_DEBUG"] = "INFO";
  (*o.environment)["UNRELATED"] = "x";
  const app::LaunchPlan p = app::plan_launch(o);
  EXPECT_EQ(p.threads_per_rank, 3);
  EXPECT_EQ(p.env.count("OMP_NUM_THREADS"), 0u);  // inherited, not overridden
  EXPECT_TRUE(has_pair(p.argv, "-x", "OMP_NUM_THREADS"));
  EXPECT_TRUE(has_pair(p.argv, "-x", "OMP_WAIT_POLICY"));
  EXPECT_TRUE(has_pair(p.argv, "-x", "DS_ACCELERATOR"));
  EXPECT_TRUE(has_pair(p.argv, "-x", "NCCL_DEBUG"));
  EXPECT_FALSE(has_pair(p.argv, "-x", "UNRELATED"));
  EXPECT_FALSE(has_pair(p.argv, "-x", "PATH"));
}

TEST_F(LauncherTest, PlanWithoutWaitPolicyDoesNotExportIt) {
  EXPECT_FALSE(has_pair(app::plan_launch(options()).argv, "-x", "OMP_WAIT_POLICY"));
}

TEST_F(LauncherTest, PlanExportsDeepspeedEnvFile) {
  write("home/.deepspeed_env", "FROM_HOME=1\nSHARED=home\n");
  write("cwd/.deepspeed_env", "# comment\n\nNCCL_IB_DISABLE=1\nSHARED=cwd\nODD=a=b c\nOMP_NUM_THREADS=5\n");
  app::LaunchOptions o = options();
  o.env_file_dirs = {dir_ + "/home", dir_ + "/cwd"};
  const app::LaunchPlan p = app::plan_launch(o);
  EXPECT_EQ(p.env.at("FROM_HOME"), "1");
  EXPECT_EQ(p.env.at("SHARED"), "cwd");  // the working directory's file wins, as DeepSpeed reads it last
  EXPECT_EQ(p.env.at("ODD"), "a=b c");
  EXPECT_EQ(p.env.at("NCCL_IB_DISABLE"), "1");
  for (const char* k : {"FROM_HOME", "SHARED", "ODD", "NCCL_IB_DISABLE"}) EXPECT_TRUE(has_pair(p.argv, "-x", k)) << k;
  // A thread count set in the file counts as the user's choice.
  EXPECT_EQ(p.threads_per_rank, 5);
  EXPECT_EQ(p.env.at("OMP_NUM_THREADS"), "5");
}

TEST_F(LauncherTest, PlanEnvFileNameFromDsEnvFile) {
  write("cwd/my_env", "ONLY_HERE=yes\n");
  write("cwd/.deepspeed_env", "NOT_READ=1\n");
  app::LaunchOptions o = options();
  (*o.environment)["DS_ENV_FILE"] = "my_env";
  const app::LaunchPlan p = app::plan_launch(o);
  EXPECT_EQ(p.env.at("ONLY_HERE"), "yes");
  EXPECT_EQ(p.env.count("NOT_READ"), 0u);
}

TEST_F(LauncherTest, PlanBadEnvFileLine) {
  write("cwd/.deepspeed_env", "GOOD=1\njust words\n");
  expect_error<ConfigError>([&] { app::plan_launch(options()); }, {".deepspeed_env:2", "just words", "KEY=VALUE"});
}

TEST_F(LauncherTest, PlanFromHostfile) {
  app::LaunchOptions o = options();
  o.hostfile = write("hostfile", "worker-0 slots=4\nworker-1 slots=4\n");
  o.include = "worker-0@worker-1:0,2";
  const app::LaunchPlan p = app::plan_launch(o);
  EXPECT_EQ(p.world_size, 6);
  EXPECT_TRUE(has_pair(p.argv, "-n", "6"));
  ASSERT_FALSE(p.hostfile_path.empty());
  EXPECT_TRUE(has_pair(p.argv, "--hostfile", p.hostfile_path));
  EXPECT_EQ(p.hostfile_text, "worker-0 slots=4\nworker-1 slots=2\n");
  EXPECT_EQ(p.env.at("DS_WORLD_INFO"), "worker-0:0,1,2,3@worker-1:0,2");
  EXPECT_EQ(p.threads_per_rank, 2);  // this machine is not listed: the busiest host (4 ranks) sets the split
  EXPECT_FALSE(fs::exists(p.hostfile_path));  // planning writes nothing
}

TEST_F(LauncherTest, PlanNumNodesAndRanksPerHost) {
  app::LaunchOptions o = options();
  o.hostfile = write("hostfile", "worker-0 slots=4\nworker-1 slots=4\nworker-2 slots=2\n");
  o.num_nodes = 2;
  app::LaunchPlan p = app::plan_launch(o);
  EXPECT_EQ(p.world_size, 8);
  EXPECT_EQ(p.hostfile_text, "worker-0 slots=4\nworker-1 slots=4\n");
  o.num_procs = 2;  // DeepSpeed's --num_gpus: slots [0, 2) on each host
  p = app::plan_launch(o);
  EXPECT_EQ(p.world_size, 4);
  EXPECT_EQ(p.hostfile_text, "worker-0 slots=2\nworker-1 slots=2\n");
  EXPECT_EQ(p.threads_per_rank, 4);
}

TEST_F(LauncherTest, PlanErrors) {
  app::LaunchOptions o = options({});
  expect_error<ConfigError>([&] { app::plan_launch(o); }, {"nothing to launch", "--"});
  o = options();
  o.num_nodes = 2;
  expect_error<ConfigError>([&] { app::plan_launch(o); }, {"--num-nodes 2", "hostfile"});
  o = options();
  o.num_procs = 2;
  o.include = "localhost:0";
  expect_error<ConfigError>([&] { app::plan_launch(o); }, {"cannot be combined"});
  o = options();
  o.include = "localhost";
  o.exclude = "localhost:0";
  expect_error<ConfigError>([&] { app::plan_launch(o); }, {"cannot be used together"});
  o = options();
  o.hostfile = write("hostfile", "worker-0 slots=4\nworker-1 slots=2\n");
  o.num_nodes = 3;
  expect_error<ConfigError>([&] { app::plan_launch(o); }, {"--num-nodes 3", "2 host(s)"});
  o.num_nodes = 0;
  o.num_procs = 3;
  expect_error<ConfigError>([&] { app::plan_launch(o); }, {"-n 3", "'worker-1' has 2 slot(s)"});
  o = options();
  o.hostfile = dir_ + "/missing_hostfile";
  expect_error<IoError>([&] { app::plan_launch(o); }, {"missing_hostfile", "does not exist"});
}

TEST_F(LauncherTest, PlanIncludeWithoutHostfileFiltersThisMachine) {
  app::LaunchOptions o = options();
  o.include = "localhost";
  EXPECT_EQ(app::plan_launch(o).world_size, 1);
  o.include = "worker-0";
  expect_error<ConfigError>([&] { app::plan_launch(o); }, {"'worker-0'", "localhost (slots 0)"});
}

TEST_F(LauncherTest, PlanMissingMpirun) {
  app::LaunchOptions o = options();
  (*o.environment)["PATH"] = dir_ + "/empty:/nonexistent";
  expect_error<IoError>([&] { app::plan_launch(o); }, {"cannot find mpirun", "apt-get install openmpi-bin", "srun"});
  o = options();
  o.launcher_path = "/nonexistent/mpirun";
  expect_error<IoError>([&] { app::plan_launch(o); }, {"cannot find mpirun", "/nonexistent/mpirun"});
  o.launcher_path = fake_mpirun_;
  (*o.environment)["PATH"] = "";
  EXPECT_EQ(app::plan_launch(o).argv[0], fake_mpirun_);
}

TEST_F(LauncherTest, DryRunTextQuotesForTheShell) {
  app::LaunchOptions o = options({"sh", "-c", "echo rank=$OMPI_COMM_WORLD_RANK it's"});
  o.num_procs = 2;
  const std::string text = app::format_plan(app::plan_launch(o));
  EXPECT_NE(text.find("OMP_NUM_THREADS=4 "), std::string::npos) << text;
  EXPECT_NE(text.find(fake_mpirun_ + " -n 2 "), std::string::npos) << text;
  EXPECT_NE(text.find("-- sh -c 'echo rank=$OMPI_COMM_WORLD_RANK it'\\''s'"), std::string::npos) << text;
}

// ---- running --------------------------------------------------------------------------------------------------

TEST_F(LauncherTest, RunReturnsExitStatusAndPassesEnvironment) {
  app::LaunchPlan p;
  p.argv = {"/bin/sh", "-c", "exit 7"};
  EXPECT_EQ(app::run_launch(p), 7);
  p.argv = {"/bin/sh", "-c", "test \"$LAUNCH_TEST_VAR\" = 'a b'"};
  p.env["LAUNCH_TEST_VAR"] = "a b";
  EXPECT_EQ(app::run_launch(p), 0);
  p.argv = {"/bin/sh", "-c", "kill -9 $$"};
  EXPECT_EQ(app::run_launch(p), 128 + 9);
}

TEST_F(LauncherTest, RunWritesHostfileOnlyWhileRunning) {
  app::LaunchPlan p;
  p.hostfile_path = dir_ + "/generated_hostfile";
  p.hostfile_text = "worker-0 slots=2\n";
  p.argv = {"/bin/sh", "-c", "grep -qx 'worker-0 slots=2' \"$0\"", p.hostfile_path};
  EXPECT_EQ(app::run_launch(p), 0);
  EXPECT_FALSE(fs::exists(p.hostfile_path));
}

}  // namespace
}  // namespace ds
