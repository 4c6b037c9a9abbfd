// DeepSpeed's launcher semantics (runner.py: _parse_hostfile, parse_resource_filter, --num_nodes/--num_gpus, the
// .deepspeed_env exports) turned into one mpirun command line, and the fork/exec/wait that runs it.
// Non-obvious: SIGINT/SIGTERM are forwarded to mpirun only when someone sent them to us alone (kill, a batch
// system); a terminal's Ctrl-C already reaches mpirun, which shares our process group, and a second copy would make
// mpirun skip its orderly abort. The generated hostfile is written by run_launch, not plan_launch, so a dry run
// leaves nothing behind.
#include "ds/app/launcher.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <system_error>
#include <thread>
#include <utility>

#include "ds/core/error.h"
#include "ds/core/strings.h"
#include "ds/core/log.h"

extern char** environ;

namespace ds::app {
namespace {

constexpr const char* kSpecForm =
    "expected NODE_SPEC[@NODE_SPEC...] with NODE_SPEC = host[:slot[,slot...]], e.g. 'worker-0@worker-1:0,2'";
constexpr const char* kNoMpirun =
    "cannot find mpirun; install openmpi-bin (apt-get install openmpi-bin) or run ranks with srun/mpirun yourself";

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t pos = s.find(sep, start);
    out.push_back(s.substr(start, pos == std::string::npos ? std::string::npos : pos - start));
    if (pos == std::string::npos) return out;
    start = pos + 1;
  }
}

// A non-negative decimal that fits an int, or nullopt.
std::optional<int> parse_count(const std::string& s) {
  int v = 0;
  if (s.empty()) return std::nullopt;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || v < 0) return std::nullopt;
  return v;
}

// "0-3,6" for {0,1,2,3,6}: hostfiles with many slots would otherwise flood an error message.
std::string format_slots(const std::vector<int>& slots) {
  std::string out;
  for (size_t i = 0; i < slots.size();) {
    size_t j = i;
    while (j + 1 < slots.size() && slots[j + 1] == slots[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += j == i ? std::to_string(slots[i]) : fmt::format("{}-{}", slots[i], slots[j]);
    i = j + 1;
  }
  return out;
}

std::string describe_hosts(const std::vector<HostSlots>& hosts) {
  std::string out;
  for (const auto& h : hosts) {
    if (!out.empty()) out += ", ";
    out += fmt::format("{} (slots {})", h.host, format_slots(h.slots));
  }
  return out;
}

std::vector<int> iota_slots(int n) {
  std::vector<int> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<size_t>(i)] = i;
  return v;
}

bool is_env_name(const std::string& s) {
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0]))) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
}

std::map<std::string, std::string> process_environment() {
  std::map<std::string, std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const char* eq = std::strchr(*e, '=');
    if (eq != nullptr) env.emplace(std::string(*e, static_cast<size_t>(eq - *e)), std::string(eq + 1));
  }
  return env;
}

int detect_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

bool is_executable_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

std::string find_mpirun(const std::string& launcher_path, const std::map<std::string, std::string>& env) {
  if (!launcher_path.empty()) {
    DS_CHECK_AS(IoError, is_executable_file(launcher_path), "[launch] {} (no executable at --launcher-path '{}')",
                kNoMpirun, launcher_path);
    return launcher_path;
  }
  const auto it = env.find("PATH");
  if (it != env.end()) {
    for (const auto& dir : split(it->second, ':')) {
      const std::string candidate = (dir.empty() ? std::string(".") : dir) + "/mpirun";
      if (is_executable_file(candidate)) return candidate;
    }
  }
  DS_THROW(IoError, "[launch] {} (no mpirun on PATH)", kNoMpirun);
}

// DeepSpeed's .deepspeed_env: KEY=VALUE lines, read from each directory in turn (later ones win). Blank lines and
// '#' comment lines are skipped; anything else without '=' is an error rather than silently dropped.
std::map<std::string, std::string> read_env_files(const std::vector<std::string>& dirs, const std::string& name) {
  std::map<std::string, std::string> vars;
  for (const auto& dir : dirs) {
    const std::string path = (!name.empty() && name[0] == '/') ? name : dir + "/" + name;
    std::ifstream in(path);
    if (!in) continue;
    std::string line;
    for (int line_no = 1; std::getline(in, line); ++line_no) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      const std::string t = trim(line);
      if (t.empty() || t[0] == '#') continue;
      const auto eq = line.find('=');
      const std::string key = eq == std::string::npos ? "" : trim(line.substr(0, eq));
      DS_CHECK_AS(ConfigError, is_env_name(key),
                  "[launch] {}:{}: bad line '{}'; expected KEY=VALUE (an environment variable for every rank)", path,
                  line_no, line);
      vars[key] = line.substr(eq + 1);
    }
    log_info("[launch] exporting {} variable(s) from {}", vars.size(), path);
  }
  return vars;
}

std::string this_host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "";
  return buf;
}

// Ranks that will run on this machine: the hostfile entry naming it, else the busiest host (our best guess for
// remote machines of the same kind).
int local_rank_count(const std::vector<HostSlots>& hosts) {
  const std::string me = this_host_name();
  const std::string me_short = me.substr(0, me.find('.'));
  int busiest = 1;
  for (const auto& h : hosts) {
    const int n = static_cast<int>(h.slots.size());
    if (h.host == "localhost" || h.host == "127.0.0.1" || h.host == me || h.host == me_short) return n;
    busiest = std::max(busiest, n);
  }
  return busiest;
}

// Signal forwarding state for run_launch; one launch at a time per process.
volatile sig_atomic_t g_child_pid = 0;

void forward_signal(int sig, siginfo_t* info, void*) {
  // SI_KERNEL: generated by the terminal for the whole foreground process group, which includes mpirun.
  if (info != nullptr && info->si_code == SI_KERNEL) return;
  const pid_t child = g_child_pid;
  if (child > 0) ::kill(child, sig);
}

void write_hostfile(const std::string& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0 && errno == EEXIST) {  // left over by an earlier run with our pid; O_EXCL keeps this safe
    ::unlink(path.c_str());
    fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  }
  DS_CHECK_AS(IoError, fd >= 0, "[launch] cannot create the temporary hostfile {}: {}; set TMPDIR to a writable folder",
              path, std::strerror(errno));
  const ssize_t n = ::write(fd, text.data(), text.size());
  const int err = errno;
  ::close(fd);
  DS_CHECK_AS(IoError, n == static_cast<ssize_t>(text.size()), "[launch] cannot write the temporary hostfile {}: {}",
              path, std::strerror(err));
}

}  // namespace

std::vector<HostSlots> parse_hostfile(const std::string& text, const std::string& source_name) {
  static const std::regex kLine(R"(^(\S+)\s+slots=(\d+)(\s.*)?$)");
  std::vector<HostSlots> hosts;
  std::map<std::string, int> first_line;
  std::istringstream in(text);
  std::string raw;
  for (int line_no = 1; std::getline(in, raw); ++line_no) {
    const std::string line = trim(raw.substr(0, raw.find('#')));
    if (line.empty()) continue;
    std::smatch m;
    DS_CHECK_AS(ConfigError, std::regex_match(line, m, kLine),
                "[launch] {}:{}: bad hostfile line '{}'; expected '<host> slots=<N>', e.g. 'worker-0 slots=4'",
                source_name, line_no, trim(raw));
    const std::string host = m[1].str();
    const std::optional<int> slots = parse_count(m[2].str());
    DS_CHECK_AS(ConfigError, slots.has_value(), "[launch] {}:{}: slots={} on line '{}' is too large; give the number "
                "of ranks this host runs", source_name, line_no, m[2].str(), trim(raw));
    DS_CHECK_AS(ConfigError, *slots > 0,
                "[launch] {}:{}: host '{}' has slots=0 on line '{}'; give it at least one slot or remove the line",
                source_name, line_no, host, trim(raw));
    const auto [it, fresh] = first_line.emplace(host, line_no);
    DS_CHECK_AS(ConfigError, fresh,
                "[launch] {}:{}: host '{}' is listed again (first on line {}); list each host once with all its slots",
                source_name, line_no, host, it->second);
    hosts.push_back({host, iota_slots(*slots)});
  }
  DS_CHECK_AS(ConfigError, !hosts.empty(),
              "[launch] {}: no hosts found; expected lines of '<host> slots=<N>' (drop --hostfile to run on this "
              "machine only)", source_name);
  return hosts;
}

std::optional<std::vector<HostSlots>> load_hostfile(const std::string& path, bool required) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 && errno == ENOENT) {
    DS_CHECK_AS(IoError, !required, "[launch] hostfile '{}' does not exist; check the --hostfile path (or drop it to "
                "run on this machine only)", path);
    log_warning("[launch] no hostfile at {}; using local resources only", path);
    return std::nullopt;
  }
  std::ifstream in(path);
  DS_CHECK_AS(IoError, in && S_ISREG(st.st_mode), "[launch] cannot read hostfile '{}': {}; give a readable file of "
              "'<host> slots=<N>' lines", path, S_ISREG(st.st_mode) ? "permission denied" : "not a regular file");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_hostfile(ss.str(), path);
}

std::vector<HostSlots> parse_node_specs(const std::string& spec, const std::string& flag) {
  std::vector<HostSlots> out;
  DS_CHECK_AS(ConfigError, !spec.empty(), "[launch] {} is empty; {}", flag, kSpecForm);
  for (const std::string& node : split(spec, '@')) {
    const auto colon = node.find(':');
    HostSlots hs{node.substr(0, colon), {}};
    DS_CHECK_AS(ConfigError, !hs.host.empty(), "[launch] {} '{}': empty host in '{}'; {}", flag, spec, node,
                kSpecForm);
    if (colon != std::string::npos) {
      for (const std::string& s : split(node.substr(colon + 1), ',')) {
        const std::optional<int> slot = parse_count(s);
        DS_CHECK_AS(ConfigError, slot.has_value(), "[launch] {} '{}': '{}' is not a slot number (in '{}'); {}", flag,
                    spec, s, node, kSpecForm);
        hs.slots.push_back(*slot);
      }
    }
    out.push_back(std::move(hs));
  }
  return out;
}

std::string format_node_specs(const std::vector<HostSlots>& hosts) {
  std::string out;
  for (const auto& h : hosts) {
    if (!out.empty()) out += '@';
    out += h.host;
    for (size_t i = 0; i < h.slots.size(); ++i) {
      out += i == 0 ? ':' : ',';
      out += std::to_string(h.slots[i]);
    }
  }
  return out;
}

std::vector<HostSlots> apply_include_exclude(const std::vector<HostSlots>& hosts, const std::string& include,
                                             const std::string& exclude) {
  DS_CHECK_AS(ConfigError, include.empty() || exclude.empty(),
              "[launch] --include '{}' and --exclude '{}' cannot be used together; give one of them", include,
              exclude);
  if (include.empty() && exclude.empty()) return hosts;
  const bool including = !include.empty();
  const std::string flag = including ? "--include" : "--exclude";
  const std::string& spec = including ? include : exclude;

  std::map<std::string, std::set<int>> chosen;  // include: what to keep; exclude: what is left
  if (!including)
    for (const auto& h : hosts) chosen[h.host].insert(h.slots.begin(), h.slots.end());
  for (const HostSlots& want : parse_node_specs(spec, flag)) {
    const auto it = std::find_if(hosts.begin(), hosts.end(), [&](const HostSlots& h) { return h.host == want.host; });
    DS_CHECK_AS(ConfigError, it != hosts.end(), "[launch] {} names host '{}', which is not among the hosts: {}", flag,
                want.host, describe_hosts(hosts));
    for (int slot : want.slots)
      DS_CHECK_AS(ConfigError, std::find(it->slots.begin(), it->slots.end(), slot) != it->slots.end(),
                  "[launch] {} names slot {} on host '{}', which has slots {}", flag, slot, want.host,
                  format_slots(it->slots));
    const std::vector<int>& slots = want.slots.empty() ? it->slots : want.slots;
    std::set<int>& set = chosen[want.host];
    for (int slot : slots) including ? (void)set.insert(slot) : (void)set.erase(slot);
  }

  std::vector<HostSlots> out;
  for (const auto& h : hosts) {  // hostfile order, so ranks map to hosts as DeepSpeed maps them
    const auto it = chosen.find(h.host);
    if (it != chosen.end() && !it->second.empty()) out.push_back({h.host, {it->second.begin(), it->second.end()}});
  }
  DS_CHECK_AS(ConfigError, !out.empty(), "[launch] {} '{}' leaves no hosts to run on; the hosts are: {}", flag, spec,
              describe_hosts(hosts));
  return out;
}

LaunchPlan plan_launch(const LaunchOptions& o) {
  DS_CHECK_AS(ConfigError, !o.command.empty(),
              "[launch] nothing to launch; give the program after '--', e.g. dspeed launch -n 2 -- ./build/bin/dspeed "
              "train");
  DS_CHECK_AS(ConfigError, o.num_procs >= 0 && o.num_nodes >= 0,
              "[launch] -n and --num-nodes must be positive; found -n {} and --num-nodes {}", o.num_procs, o.num_nodes);
  DS_CHECK_AS(ConfigError, o.include.empty() || o.exclude.empty(),
              "[launch] --include '{}' and --exclude '{}' cannot be used together; give one of them", o.include,
              o.exclude);
  const bool filtering = !o.include.empty() || !o.exclude.empty();
  DS_CHECK_AS(ConfigError, !filtering || (o.num_procs == 0 && o.num_nodes == 0),
              "[launch] -n/--num-nodes cannot be combined with --include/--exclude (as in DeepSpeed); choose ranks "
              "with one or the other");

  const std::map<std::string, std::string> env = o.environment ? *o.environment : process_environment();
  const std::string mpirun = find_mpirun(o.launcher_path, env);

  LaunchPlan plan;
  const std::optional<std::vector<HostSlots>> from_file =
      o.hostfile.empty() ? load_hostfile(o.default_hostfile, false) : load_hostfile(o.hostfile, true);
  const std::string hostfile_name = o.hostfile.empty() ? o.default_hostfile : o.hostfile;
  std::vector<HostSlots> hosts;
  if (!from_file) {
    DS_CHECK_AS(ConfigError, o.num_nodes <= 1,
                "[launch] --num-nodes {} needs a hostfile listing the nodes; without one only this machine is used "
                "(give --hostfile FILE with '<host> slots=<N>' lines)", o.num_nodes);
    hosts = apply_include_exclude({{"localhost", iota_slots(std::max(1, o.num_procs))}}, o.include, o.exclude);
  } else {
    hosts = apply_include_exclude(*from_file, o.include, o.exclude);
    if (o.num_nodes > 0) {
      DS_CHECK_AS(ConfigError, o.num_nodes <= static_cast<int>(hosts.size()),
                  "[launch] --num-nodes {} but {} lists {} host(s): {}", o.num_nodes, hostfile_name, hosts.size(),
                  describe_hosts(hosts));
      hosts.resize(static_cast<size_t>(o.num_nodes));
    }
    if (o.num_procs > 0) {  // DeepSpeed's --num_gpus: slots [0, N) on every host
      for (auto& h : hosts) {
        DS_CHECK_AS(ConfigError, o.num_procs <= static_cast<int>(h.slots.size()),
                    "[launch] -n {} with a hostfile means {} ranks per host, but host '{}' has {} slot(s) in {}; lower "
                    "-n or raise its slots", o.num_procs, o.num_procs, h.host, h.slots.size(), hostfile_name);
        h.slots = iota_slots(o.num_procs);
      }
    }
  }
  plan.hosts = hosts;
  for (const auto& h : hosts) plan.world_size += static_cast<int>(h.slots.size());

  // Environment: the .deepspeed_env file first, then what the launch itself needs.
  std::vector<std::string> dirs = o.env_file_dirs;
  if (dirs.empty()) {
    const auto home = env.find("HOME");
    if (home != env.end() && !home->second.empty()) dirs.push_back(home->second);
    dirs.push_back(".");
  }
  const auto env_file = env.find("DS_ENV_FILE");
  const std::map<std::string, std::string> file_vars =
      read_env_files(dirs, env_file != env.end() ? env_file->second : ".deepspeed_env");
  std::set<std::string> exports;
  for (const auto& [k, v] : file_vars) {
    plan.env[k] = v;
    exports.insert(k);
  }
  const auto user_value = [&](const std::string& key) -> std::optional<std::string> {
    if (const auto it = file_vars.find(key); it != file_vars.end()) return it->second;
    if (const auto it = env.find(key); it != env.end()) return it->second;
    return std::nullopt;
  };
  if (const std::optional<std::string> omp = user_value("OMP_NUM_THREADS")) {
    plan.threads_per_rank = parse_count(trim(*omp)).value_or(0);
  } else {
    const int cores = o.cores > 0 ? o.cores : detect_cores();
    plan.threads_per_rank = std::max(1, cores / std::max(1, local_rank_count(hosts)));
    plan.env["OMP_NUM_THREADS"] = std::to_string(plan.threads_per_rank);
  }
  exports.insert("OMP_NUM_THREADS");
  if (user_value("OMP_WAIT_POLICY")) exports.insert("OMP_WAIT_POLICY");
  for (const auto& [k, v] : env)
    if (k.rfind("DS_", 0) == 0 || k.rfind("NCCL_", 0) == 0 || k.rfind("UCX_", 0) == 0) exports.insert(k);
  plan.env["DS_WORLD_INFO"] = format_node_specs(hosts);
  exports.insert("DS_WORLD_INFO");
  const bool root = o.as_root.value_or(::getuid() == 0);
  if (root) {
    plan.env["OMPI_ALLOW_RUN_AS_ROOT"] = "1";
    plan.env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1";
  }

  // The command line.
  plan.argv = {mpirun, "-n", std::to_string(plan.world_size)};
  if (from_file) {
    const auto tmp = env.find("TMPDIR");
    const std::string dir = tmp != env.end() && !tmp->second.empty() ? tmp->second : "/tmp";
    plan.hostfile_path = fmt::format("{}/dspeed_hostfile_{}", dir, ::getpid());
    for (const auto& h : hosts) plan.hostfile_text += fmt::format("{} slots={}\n", h.host, h.slots.size());
    plan.argv.insert(plan.argv.end(), {"--hostfile", plan.hostfile_path});
  }
  plan.argv.insert(plan.argv.end(), {"--bind-to", "none", "--oversubscribe"});
  if (root) plan.argv.push_back("--allow-run-as-root");
  plan.argv.insert(plan.argv.end(), {"--mca", "orte_abort_on_non_zero_status", "1"});
  for (const auto& name : exports) plan.argv.insert(plan.argv.end(), {"-x", name});
  plan.argv.push_back("--");
  plan.argv.insert(plan.argv.end(), o.command.begin(), o.command.end());
  return plan;
}

std::string format_plan(const LaunchPlan& plan) {
  std::string out;
  if (!plan.hostfile_path.empty()) {
    out += fmt::format("# hostfile {} (written when the job starts):\n", plan.hostfile_path);
    for (const auto& line : split(plan.hostfile_text, '\n'))
      if (!line.empty()) out += "#   " + line + "\n";
  }
  out += fmt::format("# {} rank(s), OMP_NUM_THREADS={} per rank\n", plan.world_size,
                     plan.threads_per_rank > 0 ? std::to_string(plan.threads_per_rank) : std::string("(yours)"));
  std::string line;
  for (const auto& [k, v] : plan.env) line += k + "=" + shell_quote(v) + " ";
  for (size_t i = 0; i < plan.argv.size(); ++i) line += (i ? " " : "") + shell_quote(plan.argv[i]);
  return out + line + "\n";
}

int run_launch(const LaunchPlan& plan) {
  DS_ASSERT(!plan.argv.empty(), "empty launch plan");
  if (!plan.hostfile_path.empty()) write_hostfile(plan.hostfile_path, plan.hostfile_text);

  // Everything the child needs is built before fork: only async-signal-safe calls may follow it.
  std::map<std::string, std::string> env = process_environment();
  for (const auto& [k, v] : plan.env) env[k] = v;
  std::vector<std::string> env_strings;
  env_strings.reserve(env.size());
  for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp, argv;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = plan.argv;
  for (auto& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);

  // Block the forwarded signals across fork so that none arrives before the handler knows the child's pid.
  sigset_t block, old_mask;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  ::pthread_sigmask(SIG_BLOCK, &block, &old_mask);
  struct sigaction fwd {}, old_int {}, old_term {};
  fwd.sa_sigaction = forward_signal;
  fwd.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&fwd.sa_mask);
  ::sigaction(SIGINT, &fwd, &old_int);
  ::sigaction(SIGTERM, &fwd, &old_term);
  std::fflush(nullptr);

  const pid_t pid = ::fork();
  if (pid == 0) {
    ::signal(SIGINT, SIG_DFL);  // a background shell job starts with SIGINT ignored; mpirun must see it
    ::signal(SIGTERM, SIG_DFL);
    ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
    ::execve(argv[0], argv.data(), envp.data());
    const char msg[] = "error: [launch] cannot execute mpirun\n";
    [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, msg, sizeof(msg) - 1);
    ::_exit(127);
  }
  const int fork_errno = errno;
  if (pid > 0) g_child_pid = pid;
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);

  int status = 0;
  pid_t waited = -1;
  if (pid > 0) {
    do {
      waited = ::waitpid(pid, &status, 0);
    } while (waited < 0 && errno == EINTR);
  }
  g_child_pid = 0;
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  if (!plan.hostfile_path.empty()) ::unlink(plan.hostfile_path.c_str());
  DS_CHECK_AS(IoError, pid > 0, "[launch] cannot start mpirun: fork failed: {}", std::strerror(fork_errno));
  DS_CHECK_AS(IoError, waited == pid, "[launch] lost track of mpirun (pid {}): {}", pid, std::strerror(errno));
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace ds::app
