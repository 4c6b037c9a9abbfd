// `dspeed launch`: DeepSpeed's launcher (brief §10) on top of OpenMPI's mpirun. Owns the hostfile parser, the
// include/exclude filter, the mpirun command line with its environment, and running it with signals forwarded.
// Decision: we never start ranks ourselves (no pdsh, no per-node launch.py); mpirun starts, wires and kills them,
// so a failed rank ends the job (we pin orte_abort_on_non_zero_status=1 against site MCA files that turn it off).
// The chosen slots travel to the ranks as DS_WORLD_INFO in include syntax ("host:0,2@host2:0,1") so a device
// layer can map OMPI_COMM_WORLD_LOCAL_RANK to its slot, as DeepSpeed's CUDA_VISIBLE_DEVICES does.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace ds::app {

// One hostfile line: a host and the slot indices (0..N-1 in the file; a subset after include/exclude).
struct HostSlots {
  std::string host;
  std::vector<int> slots;
  bool operator==(const HostSlots&) const = default;
};

// DeepSpeed's hostfile: lines "<host> slots=<N>", '#' comments (whole line or trailing), blank lines. Anything
// after "slots=<N>" and whitespace is ignored, as DeepSpeed's unanchored regex does (e.g. OpenMPI's max_slots=).
// Throws ConfigError for a bad line (quoting it and its number), a duplicate host, slots=0, or no hosts at all.
// `source_name` names the text in messages (usually the path).
std::vector<HostSlots> parse_hostfile(const std::string& text, const std::string& source_name);

// DeepSpeed's default hostfile path.
inline constexpr const char* kDefaultHostfile = "/job/hostfile";

// Reads and parses a hostfile. A missing file is an IoError when `required` (the user named it); otherwise it
// logs "no hostfile at X; using local resources only" and returns nullopt (DeepSpeed's default-path behaviour).
std::optional<std::vector<HostSlots>> load_hostfile(const std::string& path, bool required);

// Parses "NODE_SPEC[@NODE_SPEC...]", NODE_SPEC = host[:slot[,slot...]], into host -> slots (empty: whole host),
// in the order given. Throws ConfigError on syntax errors; `flag` ("--include") names the option in messages.
std::vector<HostSlots> parse_node_specs(const std::string& spec, const std::string& flag);

// Formats hosts back into NODE_SPEC syntax: "a:0,1@b:0".
std::string format_node_specs(const std::vector<HostSlots>& hosts);

// DeepSpeed's parse_resource_filter: `include` keeps only the named hosts/slots, `exclude` removes them (a host
// left without slots disappears). Order follows `hosts`; slots come out sorted and unique. Giving both, naming an
// unknown host or slot, or excluding everything throws ConfigError naming the culprit and listing what exists.
std::vector<HostSlots> apply_include_exclude(const std::vector<HostSlots>& hosts, const std::string& include,
                                             const std::string& exclude);

struct LaunchOptions {
  std::vector<std::string> command;  // the user's program and its arguments (required)
  int num_procs = 0;                 // -n: ranks on this machine without a hostfile; ranks per host with one
  int num_nodes = 0;                 // --num-nodes: the first K hosts (0: all)
  std::string hostfile;              // --hostfile; empty: kDefaultHostfile if it exists, else this machine only
  std::string include, exclude;      // -i / -e
  std::string launcher_path;         // --launcher-path; empty: `mpirun` on PATH
  // Injected for tests; unset means the real process environment, core count, uid and working directory.
  std::optional<std::map<std::string, std::string>> environment;
  int cores = 0;                      // 0: CPUs this process may run on (sched_getaffinity)
  std::optional<bool> as_root;        // nullopt: getuid() == 0
  std::string default_hostfile = kDefaultHostfile;
  std::vector<std::string> env_file_dirs;  // empty: {$HOME, "."}, DeepSpeed's .deepspeed_env search path
};

struct LaunchPlan {
  std::vector<std::string> argv;             // argv[0] is the resolved mpirun path
  std::map<std::string, std::string> env;    // set on top of the inherited environment for mpirun
  int world_size = 0;
  int threads_per_rank = 0;                  // OMP_NUM_THREADS each rank gets (0: the user's value is not a number)
  std::vector<HostSlots> hosts;              // the active resources ("localhost" without a hostfile)
  std::string hostfile_path;                 // the OpenMPI hostfile run_launch writes (empty: no hostfile)
  std::string hostfile_text;                 // its contents: "host slots=N" lines
};

// Resolves hosts, slots, threads and environment into an mpirun command line. Throws ConfigError for
// contradictory options and IoError when mpirun cannot be found or a named hostfile is missing.
LaunchPlan plan_launch(const LaunchOptions& options);

// The plan as text for --dry-run: the generated hostfile, then one shell line (environment, mpirun, command).
std::string format_plan(const LaunchPlan& plan);

// Writes the generated hostfile, runs mpirun with SIGINT/SIGTERM forwarded to it, waits, removes the hostfile.
// Returns mpirun's exit status (non-zero when any rank failed), or 128+signal if mpirun itself was killed.
int run_launch(const LaunchPlan& plan);

}  // namespace ds::app
