// MonitorMaster: DeepSpeed's deepspeed/monitor/monitor.py (v0.9 and later). Rank 0 builds one monitor per enabled
// block, tensorboard before csv_monitor as DeepSpeed does, and hands every batch of events to each in turn; the
// other ranks build nothing, so a config read on every rank creates its files once.
#include "ds/monitor/monitor.h"

#include "ds/core/error.h"

#include <fmt/core.h>

#include <filesystem>

namespace ds::monitor {

std::string monitor_log_dir(const config::MonitorConfig& cfg) {
  const std::string& base = cfg.output_path;
  const std::string& name = cfg.job_name;
  if (!name.empty() && name.front() == '/') return name;  // os.path.join drops what precedes an absolute part
  if (base.empty() || base.back() == '/') return base + name;
  return base + "/" + name;
}

std::string create_monitor_log_dir(const config::MonitorConfig& cfg, const char* block) {
  const std::string dir = monitor_log_dir(cfg);
  DS_CHECK_AS(ConfigError, !dir.empty(),
              "[monitor] {} has an empty output_path and an empty job_name; set job_name (the directory created under "
              "output_path, default \"DeepSpeedJobName\")", block);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  DS_CHECK_AS(IoError, !ec && std::filesystem::is_directory(dir),
              "[monitor] cannot create the {} directory '{}': {}; check {}.output_path and its permissions", block, dir,
              ec ? ec.message() : std::string("it exists and is not a directory"), block);
  return dir;
}

MonitorMaster::MonitorMaster(const config::DeepSpeedConfig& cfg, int rank)
    : MonitorMaster(cfg.tensorboard, cfg.csv_monitor, rank) {}

MonitorMaster::MonitorMaster(const config::MonitorConfig& tensorboard, const config::MonitorConfig& csv_monitor,
                             int rank)
    : enabled_(tensorboard.enabled || csv_monitor.enabled) {
  if (rank != 0) return;
  if (tensorboard.enabled) monitors_.push_back(make_tensorboard_monitor(tensorboard));
  if (csv_monitor.enabled) monitors_.push_back(make_csv_monitor(csv_monitor));
}

void MonitorMaster::write_events(const std::vector<MonitorEvent>& events) {
  for (auto& m : monitors_) m->write_events(events);
}

void MonitorMaster::flush() {
  for (auto& m : monitors_) m->flush();
}

}  // namespace ds::monitor
