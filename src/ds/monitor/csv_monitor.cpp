// csv_monitor: DeepSpeed's deepspeed/monitor/csv_monitor.py byte for byte. One file per event name,
// "<output_path>/<job_name>/<name, '/' and ' ' -> '_'>.csv", opened in append mode for every event; the first
// event of a name in this process writes the header "step,<last '/' part of name>" first (so a resumed run appends
// a second header, as DeepSpeed's does). Rows are what Python's csv.writer writes: "\r\n" line ends, the step as an
// integer, the value as repr(float), a field quoted only when it holds ',', '"', '\r' or '\n'.
#include "ds/monitor/monitor.h"

#include "ds/core/error.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fmt/core.h>
#include <set>

namespace ds::monitor {

namespace {

// Python's csv.QUOTE_MINIMAL for the excel dialect.
std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

void append_to_file(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
  DS_CHECK_AS(IoError, fd >= 0,
              "[monitor] cannot open csv_monitor file '{}' for appending: {}; check that its directory is writable "
              "or change csv_monitor.output_path", path, std::strerror(errno));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      DS_THROW(IoError, "[monitor] cannot write csv_monitor file '{}': {}; free disk space or change "
               "csv_monitor.output_path", path, std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  DS_CHECK_AS(IoError, ::close(fd) == 0, "[monitor] cannot close csv_monitor file '{}': {}; the last rows may be lost",
              path, std::strerror(errno));
}

class CsvMonitor final : public Monitor {
 public:
  explicit CsvMonitor(const config::MonitorConfig& cfg) : log_dir_(create_monitor_log_dir(cfg, "csv_monitor")) {}

  void write_events(const std::vector<MonitorEvent>& events) override {
    for (const MonitorEvent& e : events) {
      const std::string stem = csv_file_stem(e.name);
      std::string text;
      if (started_.insert(stem).second) text = "step," + csv_field(csv_header_name(e.name)) + "\r\n";
      text += fmt::format("{},{}\r\n", e.step, python_float_repr(e.value));
      append_to_file(log_dir_ + "/" + stem + ".csv", text);
    }
  }

  const std::string& log_dir() const override { return log_dir_; }

 private:
  std::string log_dir_;
  std::set<std::string> started_;  // file stems whose header this process wrote (DeepSpeed's self.filenames)
};

}  // namespace

std::string csv_file_stem(const std::string& event_name) {
  std::string s = event_name;
  for (char& c : s) {
    if (c == '/' || c == ' ') c = '_';
  }
  return s;
}

std::string csv_header_name(const std::string& event_name) {
  const size_t slash = event_name.rfind('/');
  return slash == std::string::npos ? event_name : event_name.substr(slash + 1);
}

// CPython's float_repr_style "short" (Python/pystrtod.c): the shortest digits that round-trip, written as a
// fixed-point number with at least one digit after the point when the decimal exponent is in [-4, 16), else as
// d[.ddd]e<sign><at least two digits>.
std::string python_float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  const std::string sci(buf, res.ptr);  // "-d.ddde-XX"
  const size_t epos = sci.find('e');
  const bool negative = sci.front() == '-';
  std::string digits;
  for (size_t i = negative ? 1 : 0; i < epos; ++i) {
    if (sci[i] != '.') digits += sci[i];
  }
  const int exp10 = std::stoi(sci.substr(epos + 1));
  const int decpt = exp10 + 1;  // v = 0.<digits> * 10^decpt
  const int nd = static_cast<int>(digits.size());
  std::string out = negative ? "-" : "";
  // Appended piece by piece: GCC 12 misreads string concatenations here as overlapping copies (-Wrestrict).
  if (decpt <= -4 || decpt > 16) {
    out.append(digits, 0, 1);
    if (nd > 1) out.append(".").append(digits, 1, std::string::npos);
    out += fmt::format("e{}{:02d}", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
  } else if (decpt <= 0) {
    out.append("0.").append(static_cast<size_t>(-decpt), '0').append(digits);
  } else if (decpt >= nd) {
    out.append(digits).append(static_cast<size_t>(decpt - nd), '0').append(".0");
  } else {
    out.append(digits, 0, static_cast<size_t>(decpt)).append(".").append(digits, static_cast<size_t>(decpt),
                                                                           std::string::npos);
  }
  return out;
}

std::unique_ptr<Monitor> make_csv_monitor(const config::MonitorConfig& cfg) {
  return std::make_unique<CsvMonitor>(cfg);
}

}  // namespace ds::monitor
