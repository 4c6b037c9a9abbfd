// Training monitors as DeepSpeed's deepspeed/monitor/: a MonitorMaster that holds the enabled monitors of a
// ds_config.json and fans (name, value, step) events out to them, a TensorBoard event-file writer and a
// csv_monitor writer with DeepSpeed's exact file layout, and a checking reader for the event files.
// Non-obvious decisions: only global rank 0 ever creates a monitor (as DeepSpeed), so the other ranks touch no
// file; wandb (and comet) need a network service: the config parser lists them as not available, nothing writes them;
// protobuf stays private to tensorboard.cpp, so this header pulls in no generated code.
#pragma once

#include "ds/config/config.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ds::monitor {

// One scalar, as DeepSpeed's event tuple (log_name, value, step): e.g. {"Train/Samples/train_loss", 2.31, 4096}.
struct MonitorEvent {
  std::string name;
  double value = 0.0;
  int64_t step = 0;
};

class Monitor {
 public:
  virtual ~Monitor() = default;
  // Writes the events in order; IoError when the file system refuses. The events are in the files (the kernel's
  // page cache) when it returns, so a killed run keeps them.
  virtual void write_events(const std::vector<MonitorEvent>& events) = 0;
  // Pushes anything still buffered to the file system (our writers buffer nothing between calls).
  virtual void flush() {}
  // The directory the monitor writes into: os.path.join(output_path, job_name).
  virtual const std::string& log_dir() const = 0;
};

// DeepSpeed's log directory: os.path.join(output_path, job_name). An empty output_path means the current
// directory ("" joins to "job_name"); an absolute job_name replaces output_path, as in Python.
std::string monitor_log_dir(const config::MonitorConfig& cfg);
// monitor_log_dir(cfg), created: ConfigError when it is empty, IoError when it cannot be made. `block` names the
// config block in messages ("tensorboard", "csv_monitor").
std::string create_monitor_log_dir(const config::MonitorConfig& cfg, const char* block);

// The writers. Both create the log directory at once (IoError when they cannot); the TensorBoard writer also
// creates its event file and writes the file_version record.
std::unique_ptr<Monitor> make_tensorboard_monitor(const config::MonitorConfig& cfg);
std::unique_ptr<Monitor> make_csv_monitor(const config::MonitorConfig& cfg);

class MonitorMaster {
 public:
  // `rank` is the global rank: only rank 0 creates monitors (and files); elsewhere write_events does nothing.
  MonitorMaster(const config::DeepSpeedConfig& cfg, int rank);
  MonitorMaster(const config::MonitorConfig& tensorboard, const config::MonitorConfig& csv_monitor, int rank);

  // tensorboard or csv_monitor is enabled in the config: the same answer on every rank, so every rank can use it
  // to decide whether to gather the values (DeepSpeed's `monitor.enabled`, less the monitors we cannot write).
  bool enabled() const { return enabled_; }
  // The monitors this rank writes to: empty unless rank 0 and enabled.
  const std::vector<std::unique_ptr<Monitor>>& monitors() const { return monitors_; }

  void write_events(const std::vector<MonitorEvent>& events);
  void flush();

 private:
  bool enabled_ = false;
  std::vector<std::unique_ptr<Monitor>> monitors_;
};

// ---- TensorBoard event files (TFRecord framing) -----------------------------------------------------------------
// Each record: uint64 length (little endian), uint32 masked crc32c of those 8 bytes, the data (a serialized Event),
// uint32 masked crc32c of the data.

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord uses. crc32c("123456789") == 0xE3069283.
uint32_t crc32c(const void* data, size_t n);
// TFRecord's mask: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t masked_crc32c(const void* data, size_t n);

// "events.out.tfevents.<%010d unix seconds>.<hostname>.<pid>.<n>", n counting the files this process opened from
// 0, as TensorBoard's EventFileWriter (used by torch's SummaryWriter) names them.
std::string tensorboard_file_name(int64_t unix_seconds, const std::string& hostname, int64_t pid, int64_t n);

// Reads an event file written by us or by TensorBoard/torch and returns its scalar (simple_value) events in file
// order; other records (the file_version record, images, histograms) are skipped. IoError naming the file and the
// record's byte offset when the file cannot be read, a length or data checksum does not match, a record claims
// more than 64 MiB, the file ends inside a record, or a record is not an Event.
std::vector<MonitorEvent> read_tensorboard_events(const std::string& path);

// The file_version of the file's first record ("brain.Event:2" for files we write); IoError as above when the
// first record is damaged or is not a file_version record.
std::string read_tensorboard_file_version(const std::string& path);

// ---- csv_monitor ------------------------------------------------------------------------------------------------
// DeepSpeed's csv naming: the file is "<log_dir>/<name with '/' and ' ' replaced by '_'>.csv" and its header is
// "step,<the part of name after its last '/'>".
std::string csv_file_stem(const std::string& event_name);
std::string csv_header_name(const std::string& event_name);
// Python's repr(float), which csv.writer writes for a float: shortest round trip, "1.0", "1e-05", "1e+16", "nan".
std::string python_float_repr(double v);

}  // namespace ds::monitor
