// Tests of the monitors against references that do not come from the code under test: published CRC-32C vectors
// and a bit-at-a-time CRC, TFRecord records and Event protos decoded and hand-encoded here byte by byte (protobuf
// wire format), csv text written out as CPython's csv.writer writes it (DeepSpeed's csv_monitor.py, checked with
// CPython 3), repr(float) strings printed by CPython, and the rank/enable rules of DeepSpeed's monitor.py.
#include "ds/monitor/monitor.h"

#include "common/scratch_dir.h"
#include "ds/config/config.h"
#include "ds/core/error.h"
#include "ds/core/log.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <regex>
#include <string>
#include <utility>
#include <vector>

namespace ds {
namespace {

namespace fs = std::filesystem;
using monitor::MonitorEvent;

// ---- independent references -------------------------------------------------------------------------------------

// CRC-32C one bit at a time (no table), the textbook definition.
uint32_t crc32c_bitwise(const std::string& s) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : s) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
  }
  return ~c;
}
uint32_t mask(uint32_t c) { return ((c >> 15) | (c << 17)) + 0xa282ead8u; }

uint64_t le(const std::string& b, size_t off, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{static_cast<unsigned char>(b[off + i])} << (8 * i);
  return v;
}
std::string le_bytes(uint64_t v, int bytes) {
  std::string s;
  for (int i = 0; i < bytes; ++i) s += static_cast<char>((v >> (8 * i)) & 0xFFu);
  return s;
}
std::string varint(uint64_t v) {
  std::string s;
  while (v >= 0x80) {
    s += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  s += static_cast<char>(v);
  return s;
}
std::string length_delimited(int field, const std::string& payload) {
  return std::string(1, static_cast<char>((field << 3) | 2)) + varint(payload.size()) + payload;
}
std::string float_bytes(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return le_bytes(u, 4);
}

// A TFRecord as found in the file: where it starts and its data.
struct RawRecord {
  size_t offset;
  std::string data;
};

// Splits a file into records, checking the framing with the bitwise CRC (fails the test on any mismatch).
std::vector<RawRecord> split_records(const std::string& file) {
  std::vector<RawRecord> out;
  size_t off = 0;
  while (off < file.size()) {
    EXPECT_GE(file.size() - off, 16u);
    const uint64_t len = le(file, off, 8);
    EXPECT_EQ(le(file, off + 8, 4), mask(crc32c_bitwise(file.substr(off, 8))));
    std::string data = file.substr(off + 12, len);
    EXPECT_EQ(le(file, off + 12 + len, 4), mask(crc32c_bitwise(data)));
    out.push_back({off, std::move(data)});
    off += 12 + len + 4;
  }
  return out;
}

// The expected bytes of Event {wall_time, step, summary {value {tag, simple_value}}}: fields in number order.
std::string scalar_event_bytes(const std::string& wall_time_bytes, int64_t step, const std::string& tag, float v) {
  const std::string value = length_delimited(1, tag) + "\x15" + float_bytes(v);  // tag = 1, simple_value = 2 (fixed32)
  const std::string summary = length_delimited(1, value);                        // Summary.value = 1
  return "\x09" + wall_time_bytes + "\x10" + varint(static_cast<uint64_t>(step)) + length_delimited(5, summary);
}

double as_double(const std::string& bytes8) {
  const uint64_t u = le(bytes8, 0, 8);
  double d;
  std::memcpy(&d, &u, 8);
  return d;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string hostname() {
  char buf[256] = {};
  ::gethostname(buf, sizeof(buf) - 1);
  return buf;
}

config::MonitorConfig block(bool enabled, const std::string& output_path, const std::string& job_name) {
  config::MonitorConfig c;
  c.enabled = enabled;
  c.output_path = output_path;
  c.job_name = job_name;
  return c;
}

// Expects `fn` to throw IoError whose message holds every fragment.
template <typename Fn>
void expect_io_error(Fn&& fn, std::initializer_list<std::string> fragments) {
  try {
    fn();
  } catch (const IoError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("[monitor]", 0), 0u) << msg;
    for (const auto& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << "missing '" << f << "' in: " << msg;
    return;
  }
  ADD_FAILURE() << "no IoError";
}

class MonitorTest : public test::ScratchDirTest {
 protected:
  // The only file in `dir` (a TensorBoard log directory holds one event file per monitor).
  static std::string only_file(const std::string& dir) {
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path().string());
    EXPECT_EQ(files.size(), 1u);
    return files.empty() ? std::string() : files[0];
  }

  // Writes `n` steps of three tags through a MonitorMaster and returns the event file.
  std::string write_tensorboard_run(int n, std::vector<MonitorEvent>* written = nullptr) {
    monitor::MonitorMaster master(block(true, dir_.string(), "job"), block(false, "", "x"), 0);
    for (int step = 1; step <= n; ++step) {
      std::vector<MonitorEvent> events = {{"Train/Samples/train_loss", 2.0 / step + 0.1, step * 32},
                                          {"Train/Samples/lr", 1e-4 * step, step * 32},
                                          {"Train/Samples/loss_scale", 65536.0, step * 32}};
      master.write_events(events);
      if (written) written->insert(written->end(), events.begin(), events.end());
    }
    return only_file(path("job"));
  }
};

// ---- CRC --------------------------------------------------------------------------------------------------------

TEST(MonitorCrc, KnownVectors) {
  // The check value of CRC-32C and the iSCSI vectors of RFC 3720 B.4.
  EXPECT_EQ(monitor::crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(monitor::crc32c("", 0), 0u);
  const std::string zeros(32, '\0'), ones(32, '\xff');
  std::string inc;
  for (int i = 0; i < 32; ++i) inc += static_cast<char>(i);
  EXPECT_EQ(monitor::crc32c(zeros.data(), 32), 0x8A9136AAu);
  EXPECT_EQ(monitor::crc32c(ones.data(), 32), 0x62A8AB43u);
  EXPECT_EQ(monitor::crc32c(inc.data(), 32), 0x46DD794Eu);
}

TEST(MonitorCrc, TableMatchesBitwiseAndMaskFormula) {
  std::string s;
  for (int n = 0; n < 300; ++n) {
    EXPECT_EQ(monitor::crc32c(s.data(), s.size()), crc32c_bitwise(s)) << n;
    EXPECT_EQ(monitor::masked_crc32c(s.data(), s.size()), mask(crc32c_bitwise(s))) << n;
    s += static_cast<char>((n * 131 + 7) & 0xFF);
  }
  // The mask by hand for "123456789": rotr(0xE3069283, 15) = 0x2507C60D, plus 0xa282ead8.
  EXPECT_EQ(monitor::masked_crc32c("123456789", 9), 0x2507C60Du + 0xa282ead8u);
}

// ---- TensorBoard ------------------------------------------------------------------------------------------------

TEST(MonitorTensorBoard, FileNameAsEventFileWriter) {
  EXPECT_EQ(monitor::tensorboard_file_name(1700000000, "node7", 4242, 0), "events.out.tfevents.1700000000.node7.4242.0");
  EXPECT_EQ(monitor::tensorboard_file_name(12345, "h", 1, 3), "events.out.tfevents.0000012345.h.1.3");  // %010d
}

TEST_F(MonitorTest, TensorBoardRoundTrip) {
  const double t0 = now_seconds();
  std::vector<MonitorEvent> written;
  const std::string file = write_tensorboard_run(5, &written);
  const double t1 = now_seconds();

  // Name: events.out.tfevents.<10-digit seconds>.<host>.<pid>.<n>, in <output_path>/<job_name>.
  const std::string name = fs::path(file).filename().string();
  const std::regex pattern(R"(events\.out\.tfevents\.(\d{10})\.(.+)\.(\d+)\.(\d+))");
  std::smatch m;
  ASSERT_TRUE(std::regex_match(name, m, pattern)) << name;
  EXPECT_GE(std::stoll(m[1]), static_cast<long long>(t0) - 1);
  EXPECT_LE(std::stoll(m[1]), static_cast<long long>(t1) + 1);
  EXPECT_EQ(m[2].str(), hostname());
  EXPECT_EQ(std::stoll(m[3]), static_cast<long long>(::getpid()));
  EXPECT_EQ(monitor::read_tensorboard_file_version(file), "brain.Event:2");

  const std::vector<MonitorEvent> read = monitor::read_tensorboard_events(file);
  ASSERT_EQ(read.size(), written.size());
  for (size_t i = 0; i < read.size(); ++i) {
    EXPECT_EQ(read[i].name, written[i].name) << i;
    EXPECT_EQ(read[i].step, written[i].step) << i;
    EXPECT_EQ(read[i].value, static_cast<double>(static_cast<float>(written[i].value))) << i;  // simple_value: float
  }
}

TEST_F(MonitorTest, TensorBoardBytesMatchHandEncoding) {
  const double t0 = now_seconds();
  const std::string file = write_tensorboard_run(2);
  const double t1 = now_seconds();
  const std::vector<RawRecord> records = split_records(read_bytes(file));
  ASSERT_EQ(records.size(), 1u + 2 * 3);

  // Record 0: Event {wall_time = 1 (fixed64), file_version = 3 "brain.Event:2"}.
  const std::string& first = records[0].data;
  ASSERT_EQ(first.size(), 9u + 2 + 13);
  EXPECT_EQ(first[0], '\x09');
  EXPECT_GE(as_double(first.substr(1, 8)), t0 - 1);
  EXPECT_LE(as_double(first.substr(1, 8)), t1 + 1);
  EXPECT_EQ(first.substr(9), length_delimited(3, "brain.Event:2"));

  // Record 2: the second tag of step 1.
  const std::string& second = records[2].data;
  const std::string wall = second.substr(1, 8);
  EXPECT_GE(as_double(wall), t0 - 1);
  EXPECT_LE(as_double(wall), t1 + 1);
  EXPECT_EQ(second, scalar_event_bytes(wall, 32, "Train/Samples/lr", static_cast<float>(1e-4)));
}

TEST_F(MonitorTest, TensorBoardEventsAreOnDiskAfterEachCall) {
  monitor::MonitorMaster master(block(true, dir_.string(), "job"), block(false, "", "x"), 0);
  const std::string file = only_file(path("job"));
  EXPECT_TRUE(monitor::read_tensorboard_events(file).empty());
  master.write_events({{"a", 1.5, 1}});
  EXPECT_EQ(monitor::read_tensorboard_events(file).size(), 1u);  // the writer is still open
  master.write_events({{"a", 2.5, 2}, {"b", 3.5, 2}});
  const auto events = monitor::read_tensorboard_events(file);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[2].name, "b");
  EXPECT_EQ(events[2].value, 3.5);
}

TEST_F(MonitorTest, TensorBoardSecondWriterGetsItsOwnFile) {
  auto a = monitor::make_tensorboard_monitor(block(true, dir_.string(), "job"));
  auto b = monitor::make_tensorboard_monitor(block(true, dir_.string(), "job"));
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(path("job"))) names.push_back(e.path().filename().string());
  EXPECT_EQ(names.size(), 2u);
}

TEST_F(MonitorTest, TensorBoardCorruptByteNamesTheRecordOffset) {
  const std::string file = write_tensorboard_run(3);
  const std::string good = read_bytes(file);
  const std::vector<RawRecord> records = split_records(good);
  ASSERT_GE(records.size(), 4u);
  const size_t at = records[3].offset;

  std::string bad = good;
  bad[at + 12 + 5] ^= 0x01;  // a byte of the data
  write_bytes(file, bad);
  expect_io_error([&] { monitor::read_tensorboard_events(file); },
                  {file, "offset " + std::to_string(at), "data checksum"});

  bad = good;
  bad[at + 2] ^= 0x40;  // a byte of the length
  write_bytes(file, bad);
  expect_io_error([&] { monitor::read_tensorboard_events(file); },
                  {file, "offset " + std::to_string(at), "length checksum"});

  bad = good;
  bad[at + 12 + records[3].data.size() + 1] ^= 0x01;  // a byte of the stored data checksum
  write_bytes(file, bad);
  expect_io_error([&] { monitor::read_tensorboard_events(file); }, {"offset " + std::to_string(at)});
}

TEST_F(MonitorTest, TensorBoardTruncatedFileThrows) {
  const std::string file = write_tensorboard_run(2);
  const std::string good = read_bytes(file);
  const std::vector<RawRecord> records = split_records(good);
  const size_t last = records.back().offset;

  write_bytes(file, good.substr(0, good.size() - 3));  // inside the last record's data checksum
  expect_io_error([&] { monitor::read_tensorboard_events(file); },
                  {file, "ends inside the record at byte offset " + std::to_string(last)});
  write_bytes(file, good.substr(0, last + 5));  // inside the last record's header
  expect_io_error([&] { monitor::read_tensorboard_events(file); },
                  {"ends inside the record at byte offset " + std::to_string(last)});
  write_bytes(file, good.substr(0, last));  // on a record boundary: a complete, shorter file
  EXPECT_EQ(monitor::read_tensorboard_events(file).size(), records.size() - 2);
}

TEST_F(MonitorTest, TensorBoardOversizeRecordThrows) {
  const std::string len = le_bytes((uint64_t{64} << 20) + 1, 8);  // a valid length checksum, an absurd length
  const std::string file = path("big.tfevents");
  write_bytes(file, len + le_bytes(mask(crc32c_bitwise(len)), 4) + std::string(16, '\0'));
  expect_io_error([&] { monitor::read_tensorboard_events(file); }, {file, "offset 0", "67108865 bytes"});
}

TEST_F(MonitorTest, TensorBoardMissingFileThrows) {
  expect_io_error([&] { monitor::read_tensorboard_events(path("nope")); }, {path("nope")});
}

// ---- csv_monitor ------------------------------------------------------------------------------------------------

TEST(MonitorCsv, Naming) {
  EXPECT_EQ(monitor::csv_file_stem("Train/Samples/train_loss"), "Train_Samples_train_loss");
  EXPECT_EQ(monitor::csv_header_name("Train/Samples/train_loss"), "train_loss");
  EXPECT_EQ(monitor::csv_file_stem("eval loss"), "eval_loss");
  EXPECT_EQ(monitor::csv_header_name("eval loss"), "eval loss");
  EXPECT_EQ(monitor::csv_header_name("a/"), "");  // Python: "a/".split('/')[-1] == ""
}

TEST(MonitorCsv, PythonFloatRepr) {
  // Left: the double; right: CPython 3's repr() of it.
  const std::vector<std::pair<double, std::string>> cases = {
      {0.0, "0.0"}, {-0.0, "-0.0"}, {1.0, "1.0"}, {0.1, "0.1"}, {2.5, "2.5"}, {1e-05, "1e-05"},
      {0.0001, "0.0001"}, {0.00012345, "0.00012345"}, {1e16, "1e+16"}, {1e15, "1000000000000000.0"},
      {123456789012345678.0, "1.2345678901234568e+17"}, {1.5e300, "1.5e+300"}, {-3.25e-10, "-3.25e-10"},
      {3.4028234663852886e+38, "3.4028234663852886e+38"}, {0.30000000000000004, "0.30000000000000004"},
      {1.0 / 3.0, "0.3333333333333333"}, {100.0, "100.0"}, {65536.0, "65536.0"}, {5e-324, "5e-324"},
      {1.7976931348623157e308, "1.7976931348623157e+308"}, {9999999999999998.0, "9999999999999998.0"},
      {0.001, "0.001"}};
  for (const auto& [v, want] : cases) EXPECT_EQ(monitor::python_float_repr(v), want) << want;
  EXPECT_EQ(monitor::python_float_repr(std::numeric_limits<double>::infinity()), "inf");
  EXPECT_EQ(monitor::python_float_repr(-std::numeric_limits<double>::infinity()), "-inf");
  EXPECT_EQ(monitor::python_float_repr(std::numeric_limits<double>::quiet_NaN()), "nan");
}

TEST_F(MonitorTest, CsvLayoutAsDeepSpeed) {
  monitor::MonitorMaster master(block(false, "", "x"), block(true, dir_.string(), "job"), 0);
  master.write_events({{"Train/Samples/train_loss", 2.5, 32}, {"Train/Samples/lr", 1e-05, 32}});
  master.write_events({{"Train/Samples/train_loss", 0.1, 64}, {"Train/Samples/lr", 0.0001, 64}});
  master.write_events({{"eval loss", 3.0, 64}, {"a/b,c", 1e16, 7}});

  const std::string d = path("job");
  EXPECT_EQ(read_bytes(d + "/Train_Samples_train_loss.csv"), "step,train_loss\r\n32,2.5\r\n64,0.1\r\n");
  EXPECT_EQ(read_bytes(d + "/Train_Samples_lr.csv"), "step,lr\r\n32,1e-05\r\n64,0.0001\r\n");
  EXPECT_EQ(read_bytes(d + "/eval_loss.csv"), "step,eval loss\r\n64,3.0\r\n");
  EXPECT_EQ(read_bytes(d + "/a_b,c.csv"), "step,\"b,c\"\r\n7,1e+16\r\n");  // csv.writer quotes a ','
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(d)) names.push_back(e.path().filename().string());
  EXPECT_EQ(names.size(), 4u);
}

TEST_F(MonitorTest, CsvSecondRunAppendsWithANewHeader) {
  // DeepSpeed opens with 'a+' and remembers written headers per process: a resumed run repeats the header.
  monitor::make_csv_monitor(block(true, dir_.string(), "job"))->write_events({{"x/loss", 1.0, 1}});
  monitor::make_csv_monitor(block(true, dir_.string(), "job"))->write_events({{"x/loss", 0.5, 2}});
  EXPECT_EQ(read_bytes(path("job/x_loss.csv")), "step,loss\r\n1,1.0\r\nstep,loss\r\n2,0.5\r\n");
}

TEST_F(MonitorTest, CsvDirectoryCreatedAtConstruction) {
  auto m = monitor::make_csv_monitor(block(true, path("deep/er"), "job"));
  EXPECT_TRUE(fs::is_directory(path("deep/er/job")));
  EXPECT_EQ(m->log_dir(), path("deep/er/job"));
  EXPECT_TRUE(fs::is_empty(path("deep/er/job")));  // files appear with their first event
}

TEST_F(MonitorTest, CsvUnwritableDirectoryIsIoError) {
  write_bytes(path("file"), "x");
  try {
    monitor::make_csv_monitor(block(true, path("file"), "job"));
    ADD_FAILURE() << "no IoError";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(path("file/job")), std::string::npos) << e.what();
  }
}

// ---- MonitorMaster ----------------------------------------------------------------------------------------------

TEST(MonitorMaster, LogDirIsPythonJoin) {
  EXPECT_EQ(monitor::monitor_log_dir(block(true, "", "DeepSpeedJobName")), "DeepSpeedJobName");
  EXPECT_EQ(monitor::monitor_log_dir(block(true, "/out", "job")), "/out/job");
  EXPECT_EQ(monitor::monitor_log_dir(block(true, "/out/", "job")), "/out/job");
  EXPECT_EQ(monitor::monitor_log_dir(block(true, "out", "/abs/job")), "/abs/job");
}

TEST_F(MonitorTest, EmptyOutputPathWritesUnderTheCurrentDirectory) {
  const fs::path before = fs::current_path();
  fs::current_path(dir_);
  {
    config::MonitorConfig csv;  // DeepSpeed's defaults: output_path "", job_name "DeepSpeedJobName"
    csv.enabled = true;
    monitor::MonitorMaster master(config::MonitorConfig{}, csv, 0);
    master.write_events({{"loss", 1.25, 3}});
  }
  fs::current_path(before);
  EXPECT_EQ(read_bytes(path("DeepSpeedJobName/loss.csv")), "step,loss\r\n3,1.25\r\n");
}

TEST_F(MonitorTest, DisabledMonitorsWriteNothing) {
  monitor::MonitorMaster master(block(false, dir_.string(), "tb"), block(false, dir_.string(), "csv"), 0);
  EXPECT_FALSE(master.enabled());
  EXPECT_TRUE(master.monitors().empty());
  master.write_events({{"loss", 1.0, 1}});
  master.flush();
  EXPECT_TRUE(dir_entries().empty());
}

TEST_F(MonitorTest, OnlyRankZeroWrites) {
  for (int rank : {1, 3}) {
    monitor::MonitorMaster master(block(true, dir_.string(), "tb"), block(true, dir_.string(), "csv"), rank);
    EXPECT_TRUE(master.enabled());  // the same answer on every rank
    EXPECT_TRUE(master.monitors().empty());
    master.write_events({{"loss", 1.0, 1}});
  }
  EXPECT_TRUE(dir_entries().empty());

  monitor::MonitorMaster rank0(block(true, dir_.string(), "tb"), block(true, dir_.string(), "csv"), 0);
  ASSERT_EQ(rank0.monitors().size(), 2u);
  EXPECT_EQ(rank0.monitors()[0]->log_dir(), path("tb"));  // tensorboard first, as DeepSpeed
  EXPECT_EQ(rank0.monitors()[1]->log_dir(), path("csv"));
  rank0.write_events({{"loss", 1.0, 1}});
  EXPECT_EQ(read_bytes(path("csv/loss.csv")), "step,loss\r\n1,1.0\r\n");
  EXPECT_EQ(monitor::read_tensorboard_events(only_file(path("tb"))).size(), 1u);
}

TEST_F(MonitorTest, FromDeepSpeedConfig) {
  set_log_level(LogLevel::error);  // the parser may log notes about the blocks
  const std::string d = dir_.string();
  const config::DeepSpeedConfig cfg = config::parse_config(
      R"({"train_micro_batch_size_per_gpu": 1,
          "tensorboard": {"enabled": true, "output_path": ")" + d + R"(", "job_name": "tbjob"},
          "csv_monitor": {"enabled": true, "output_path": ")" + d + R"(", "job_name": "csvjob"},
          "wandb": {"enabled": false}})",
      1, "ds_config.json");
  set_log_level(LogLevel::info);
  monitor::MonitorMaster master(cfg, 0);
  ASSERT_EQ(master.monitors().size(), 2u);
  master.write_events({{"Train/Samples/train_loss", 0.75, 8}});
  EXPECT_EQ(read_bytes(path("csvjob/Train_Samples_train_loss.csv")), "step,train_loss\r\n8,0.75\r\n");
  const auto events = monitor::read_tensorboard_events(only_file(path("tbjob")));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].value, 0.75);
}

TEST(MonitorMaster, WandbIsNotWritten) {
  const config::DeepSpeedConfig cfg = config::parse_config(
      R"({"train_batch_size": 1, "wandb": {"enabled": true, "project": "p"}})", 1, "my_config.json");
  ASSERT_EQ(cfg.warnings.size(), 1u);  // the parser says it is not available
  EXPECT_NE(cfg.warnings[0].find("'wandb.enabled' = true (Weights & Biases needs its network service"),
            std::string::npos) << cfg.warnings[0];
  monitor::MonitorMaster master(cfg, 0);  // wandb alone: nothing to write
  EXPECT_FALSE(master.enabled());
  EXPECT_TRUE(master.monitors().empty());
}

}  // namespace
}  // namespace ds
