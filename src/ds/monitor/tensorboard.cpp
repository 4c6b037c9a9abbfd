// TensorBoard monitor: what DeepSpeed's deepspeed/monitor/tensorboard.py gets from torch's SummaryWriter, without
// Python. One event file per monitor in "<output_path>/<job_name>/", named as TensorBoard's EventFileWriter names
// it; a first Event {file_version "brain.Event:2"}, then one Event {wall_time, step, summary {tag, simple_value}}
// per scalar (add_scalar's float32 "simple_value", not the newer tensor style), each in TFRecord framing.
// Decision: write_events hands all its records to the kernel in one write() and keeps no user-space buffer, so
// every call is flushed (DeepSpeed flushes after each call too) and a killed run keeps everything written.
#include "ds/monitor/monitor.h"

#include "ds/core/error.h"
#include "event.pb.h"  // generated from event.proto into the build directory; private to this file

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fmt/core.h>
#include <fstream>
#include <iterator>

namespace ds::monitor {

namespace {

constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

constexpr uint64_t kMaxRecordBytes = uint64_t{64} << 20;  // far above any scalar event; guards a corrupt length
constexpr size_t kRecordHeaderBytes = 12;                 // uint64 length + uint32 masked crc of the length
constexpr size_t kRecordFooterBytes = 4;                  // uint32 masked crc of the data
constexpr const char* kFileVersion = "brain.Event:2";

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out += static_cast<char>((v >> (8 * i)) & 0xFFu);
}

uint64_t get_le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

// One TFRecord: length, masked crc of the length bytes, data, masked crc of the data.
void append_record(std::string& out, const std::string& data) {
  std::string header;
  put_le(header, data.size(), 8);
  out += header;
  put_le(out, masked_crc32c(header.data(), header.size()), 4);
  out += data;
  put_le(out, masked_crc32c(data.data(), data.size()), 4);
}

double unix_time_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string serialize_event(const tb::Event& ev) {
  std::string s;
  const bool ok = ev.SerializeToString(&s);
  DS_ASSERT(ok, "serializing a TensorBoard Event failed");
  return s;
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "localhost";
  return buf;
}

std::atomic<int64_t> g_files_opened{0};  // EventFileWriter's _global_uid: one count per process

class TensorBoardMonitor final : public Monitor {
 public:
  explicit TensorBoardMonitor(const config::MonitorConfig& cfg)
      : log_dir_(create_monitor_log_dir(cfg, "tensorboard")) {
    const double now = unix_time_now();
    path_ = log_dir_ + "/" +
            tensorboard_file_name(static_cast<int64_t>(now), host_name(), static_cast<int64_t>(::getpid()),
                                  g_files_opened.fetch_add(1));
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    DS_CHECK_AS(IoError, fd_ >= 0, "[monitor] cannot create the tensorboard event file '{}': {}; check that '{}' is "
                "writable or change tensorboard.output_path", path_, std::strerror(errno), log_dir_);
    tb::Event ev;
    ev.set_wall_time(now);
    ev.set_file_version(kFileVersion);
    std::string records;
    append_record(records, serialize_event(ev));
    try {
      write_all(records);
    } catch (...) {  // the destructor does not run for a constructor that throws
      ::close(fd_);
      throw;
    }
  }

  TensorBoardMonitor(const TensorBoardMonitor&) = delete;
  TensorBoardMonitor& operator=(const TensorBoardMonitor&) = delete;
  ~TensorBoardMonitor() override {
    if (fd_ >= 0) ::close(fd_);
  }

  void write_events(const std::vector<MonitorEvent>& events) override {
    if (events.empty()) return;
    std::string records;
    tb::Event ev;
    for (const MonitorEvent& e : events) {  // one Event per scalar, as SummaryWriter.add_scalar
      ev.Clear();
      ev.set_wall_time(unix_time_now());
      ev.set_step(e.step);
      tb::Summary::Value* v = ev.mutable_summary()->add_value();
      v->set_tag(e.name);
      v->set_simple_value(static_cast<float>(e.value));
      append_record(records, serialize_event(ev));
    }
    write_all(records);
  }

  const std::string& log_dir() const override { return log_dir_; }

 private:
  void write_all(const std::string& bytes) {
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
      if (n < 0 && errno == EINTR) continue;
      DS_CHECK_AS(IoError, n > 0, "[monitor] cannot write the tensorboard event file '{}': {}; free disk space or "
                  "change tensorboard.output_path", path_, n < 0 ? std::strerror(errno) : "no progress");
      done += static_cast<size_t>(n);
    }
  }

  std::string log_dir_;
  std::string path_;
  int fd_ = -1;
};

std::string read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  DS_CHECK_AS(IoError, in.good(), "[monitor] cannot open the tensorboard event file '{}': {}; check the path",
              path, std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  DS_CHECK_AS(IoError, !in.bad(), "[monitor] cannot read the tensorboard event file '{}'", path);
  return bytes;
}

// Every record of the file, checked; `max_records` stops early (0: all).
std::vector<tb::Event> read_event_records(const std::string& path, size_t max_records) {
  const std::string bytes = read_whole_file(path);
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t size = bytes.size();
  std::vector<tb::Event> out;
  size_t off = 0;
  while (off < size && (max_records == 0 || out.size() < max_records)) {
    const size_t left = size - off;
    DS_CHECK_AS(IoError, left >= kRecordHeaderBytes,
                "[monitor] '{}': the file ends inside the record at byte offset {} ({} bytes left, a record header "
                "needs {}); the writer was probably killed mid-write: truncate the file to {} bytes to keep the "
                "records before it", path, off, left, kRecordHeaderBytes, off);
    const uint64_t len = get_le(p + off, 8);
    const uint32_t len_crc = static_cast<uint32_t>(get_le(p + off + 8, 4));
    const uint32_t len_crc_want = masked_crc32c(p + off, 8);
    DS_CHECK_AS(IoError, len_crc == len_crc_want,
                "[monitor] '{}': the length checksum of the record at byte offset {} does not match (stored {:#010x}, "
                "computed {:#010x}); the file is corrupt from there on: truncate it to {} bytes to keep the records "
                "before it", path, off, len_crc, len_crc_want, off);
    DS_CHECK_AS(IoError, len <= kMaxRecordBytes,
                "[monitor] '{}': the record at byte offset {} claims {} bytes, more than the {} bytes allowed; this is "
                "not an event file of scalars (or it is corrupt)", path, off, len, kMaxRecordBytes);
    DS_CHECK_AS(IoError, left - kRecordHeaderBytes >= len + kRecordFooterBytes,
                "[monitor] '{}': the file ends inside the record at byte offset {} (it needs {} bytes, {} are left); "
                "the writer was probably killed mid-write: truncate the file to {} bytes to keep the records before "
                "it", path, off, kRecordHeaderBytes + len + kRecordFooterBytes, left, off);
    const uint8_t* data = p + off + kRecordHeaderBytes;
    const uint32_t data_crc = static_cast<uint32_t>(get_le(data + len, 4));
    const uint32_t data_crc_want = masked_crc32c(data, len);
    DS_CHECK_AS(IoError, data_crc == data_crc_want,
                "[monitor] '{}': the data checksum of the record at byte offset {} does not match (stored {:#010x}, "
                "computed {:#010x}); the record is corrupt: truncate the file to {} bytes to keep the records before "
                "it", path, off, data_crc, data_crc_want, off);
    tb::Event ev;
    DS_CHECK_AS(IoError, ev.ParseFromArray(data, static_cast<int>(len)),
                "[monitor] '{}': the record at byte offset {} is not a TensorBoard Event although its checksums "
                "match; this is not a TensorBoard event file", path, off);
    out.push_back(std::move(ev));
    off += kRecordHeaderBytes + len + kRecordFooterBytes;
  }
  return out;
}

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = kCrc32cTable[(c ^ p[i]) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string tensorboard_file_name(int64_t unix_seconds, const std::string& hostname, int64_t pid, int64_t n) {
  return fmt::format("events.out.tfevents.{:010d}.{}.{}.{}", unix_seconds, hostname, pid, n);
}

std::vector<MonitorEvent> read_tensorboard_events(const std::string& path) {
  std::vector<MonitorEvent> out;
  for (const tb::Event& ev : read_event_records(path, 0)) {
    if (!ev.has_summary()) continue;
    for (const tb::Summary::Value& v : ev.summary().value()) {
      if (v.value_case() == tb::Summary::Value::kSimpleValue) out.push_back({v.tag(), v.simple_value(), ev.step()});
    }
  }
  return out;
}

std::string read_tensorboard_file_version(const std::string& path) {
  const std::vector<tb::Event> first = read_event_records(path, 1);
  DS_CHECK_AS(IoError, !first.empty() && first[0].what_case() == tb::Event::kFileVersion,
              "[monitor] '{}' does not start with a file_version record; it is not a TensorBoard event file", path);
  return first[0].file_version();
}

std::unique_ptr<Monitor> make_tensorboard_monitor(const config::MonitorConfig& cfg) {
  return std::make_unique<TensorBoardMonitor>(cfg);
}

}  // namespace ds::monitor
