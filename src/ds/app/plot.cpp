// metrics.csv reader and SVG loss chart (see plot.h). Polylines longer than kMaxPolylinePoints are thinned by
// keeping the lowest and highest point of each of kMaxPolylinePoints / 2 equal-width step buckets (in step order),
// not by striding: striding drops exactly the loss spikes one plots a run to find. The noisy raw train loss is drawn
// thin and light with a bias-corrected EMA (0.9, as TensorBoard's smoothing) on top, computed before thinning.
// Axes: y ranges are widened to whole tick steps (1/2/5 x 10^k); the shared step axis is the exact data range.
#include "ds/app/plot.h"

#include <fmt/core.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string_view>
#include <tuple>
#include <unordered_map>

#include "ds/core/error.h"
#include "ds/core/file_io.h"

namespace ds::app {
namespace {

namespace fs = std::filesystem;
using Point = std::pair<double, double>;

constexpr size_t kMaxFileBytes = size_t{256} << 20;
constexpr size_t kMaxLineBytes = size_t{64} << 10;
constexpr size_t kMaxPolylinePoints = 2000;
constexpr size_t kMaxValMarkers = 400;  // beyond this the circles merge into a band; the dashed line stays
constexpr double kEmaBeta = 0.9;
constexpr const char* kRequiredColumns[] = {"step", "loss", "val_loss", "lr"};
// Tableau 10 without grey and olive: distinct on white and for the common colour-vision deficiencies.
constexpr const char* kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                                    "#9467bd", "#8c564b", "#e377c2", "#17becf"};
constexpr size_t kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);

// ------------------------------------------------------------------------------------------------ reading

std::string read_whole_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  DS_CHECK_AS(IoError, f != nullptr, "[plot] '{}': cannot open: {}. Pass a run directory that holds the "
              "metrics.csv written by `dspeed train --out DIR`.", path, std::strerror(errno));
  struct Closer {
    std::FILE* f;
    ~Closer() { std::fclose(f); }
  } closer{f};
  struct stat st {};
  DS_CHECK_AS(IoError, ::fstat(::fileno(f), &st) == 0, "[plot] '{}': cannot stat: {}. Check its permissions.", path,
              std::strerror(errno));
  DS_CHECK_AS(IoError, S_ISREG(st.st_mode), "[plot] '{}': is not a regular file. Pass a run directory or its "
              "metrics.csv.", path);
  const auto too_big = [&](size_t bytes) {
    DS_THROW(IoError, "[plot] '{}': is {} MiB; the limit is {} MiB. This is not a metrics.csv written by "
             "`dspeed train` (one short line per step); pass that file.", path, bytes >> 20, kMaxFileBytes >> 20);
  };
  if (static_cast<size_t>(st.st_size) > kMaxFileBytes) too_big(static_cast<size_t>(st.st_size));

  std::string text;
  text.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) {
    text.append(buf, n);
    if (text.size() > kMaxFileBytes) too_big(text.size());  // the file grew while we read it
  }
  DS_CHECK_AS(IoError, !std::ferror(f), "[plot] '{}': read failed: {}. Check the disk and the file's permissions.",
              path, std::strerror(errno));
  return text;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> split_fields(std::string_view line) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    const size_t comma = line.find(',', start);
    out.push_back(trim(line.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start)));
    if (comma == std::string_view::npos) return out;
    start = comma + 1;
  }
}

std::string join_quoted(const std::vector<std::string_view>& names) {
  std::string out;
  for (std::string_view n : names) out += fmt::format("{}'{}'", out.empty() ? "" : ", ", n);
  return out;
}

// A field as a number; nullopt when empty. from_chars accepts "nan" and "inf", which the caller skips.
std::optional<double> parse_number(std::string_view field, const std::string& path, size_t line_no,
                                   std::string_view column) {
  if (field.empty()) return std::nullopt;
  double v = 0;
  const auto [end, ec] = std::from_chars(field.data(), field.data() + field.size(), v);
  // Out of range (e.g. 1e999) is a number too large to plot, not a malformed one: treat it as inf.
  const bool ok = (ec == std::errc() || ec == std::errc::result_out_of_range) && end == field.data() + field.size();
  DS_CHECK_AS(IoError, ok, "[plot] '{}': line {}, column '{}': expected a number, found '{}'. Fix or delete that "
              "line.", path, line_no, column, field);
  if (ec == std::errc::result_out_of_range) return std::numeric_limits<double>::infinity();
  return v;
}

// ------------------------------------------------------------------------------------------------ axes

struct Axis {
  double lo = 0, hi = 1;  // the data range the panel shows
  double step = 1;        // tick spacing
  std::vector<double> ticks;
};

// Values a chart can place: finite and within 1e30 (a loss or a rate past that is no number to draw; the axis
// arithmetic stays finite), steps within 1e15.
constexpr double kMaxValue = 1e30, kMaxStep = 1e15;
bool plottable(const std::optional<double>& v) { return v && std::isfinite(*v) && std::abs(*v) <= kMaxValue; }

// 1, 2 or 5 x 10^k near span / target (Heckbert, "Nice numbers for graph labels", Graphics Gems, 1990).
double nice_step(double span, int target) {
  const double rough = span / target;
  const double mag = std::pow(10.0, std::floor(std::log10(rough)));
  const double m = rough / mag;
  return (m < 1.5 ? 1.0 : m < 3 ? 2.0 : m < 7 ? 5.0 : 10.0) * mag;  // Heckbert's thresholds
}

// [lo, hi] widened when empty or degenerate, so that a constant series sits mid-panel.
std::pair<double, double> padded(double lo, double hi) {
  if (!(lo <= hi)) return {0.0, 1.0};  // no data
  if (hi - lo <= 1e-9 * std::max(std::abs(lo), std::abs(hi))) {
    const double pad = lo == 0 ? 1.0 : 0.1 * std::abs(lo);
    return {lo - pad, hi + pad};
  }
  return {lo, hi};
}

// `loose`: the range grows to whole tick steps (y axes); otherwise it stays the data range (the step axis).
Axis make_axis(double lo, double hi, int target_ticks, bool loose, double min_step = 0) {
  Axis a;
  std::tie(a.lo, a.hi) = padded(lo, hi);
  a.step = std::max(nice_step(a.hi - a.lo, target_ticks), min_step);
  constexpr double kEps = 1e-9;
  if (loose) {
    a.lo = std::floor(a.lo / a.step + kEps) * a.step;
    a.hi = std::ceil(a.hi / a.step - kEps) * a.step;
  }
  const auto first = static_cast<int64_t>(std::ceil(a.lo / a.step - kEps));
  const auto last = static_cast<int64_t>(std::floor(a.hi / a.step + kEps));
  for (int64_t k = first; k <= last; ++k) a.ticks.push_back(static_cast<double>(k) * a.step);
  return a;
}

// "0", "6", "7.5", "0.25", "1.5e-3" (steps below 0.01, as learning rates), "20k" (large round steps).
std::string format_tick(double v, double step) {
  if (std::abs(v) < step * 1e-6) return "0";
  if (step < 1e-2 || std::abs(v) >= 1e6) {
    const int e = static_cast<int>(std::floor(std::log10(std::abs(v)) + 1e-9));
    return fmt::format("{:.3g}e{}", v / std::pow(10.0, e), e);
  }
  if (std::abs(v) >= 1e4 && step >= 1000) return fmt::format("{:g}k", v / 1000);
  const int decimals = std::max(0, static_cast<int>(std::ceil(-std::log10(step) - 1e-9)));
  return fmt::format("{:.{}f}", v, decimals);
}

// ------------------------------------------------------------------------------------------------ text

// XML-escaped text; control characters and invalid UTF-8 bytes become '?', which keeps the document well-formed
// whatever bytes a directory name holds.
std::string xml_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '&': out += "&amp;"; break;
        case '<': out += "&lt;"; break;
        case '>': out += "&gt;"; break;
        case '"': out += "&quot;"; break;
        case '\'': out += "&apos;"; break;
        default: out += (c < 0x20 || c == 0x7f) ? '?' : static_cast<char>(c);
      }
      ++i;
      continue;
    }
    const size_t len = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    bool valid = len != 0 && c != 0xc0 && c != 0xc1 && c < 0xf5 && i + len <= s.size();
    for (size_t k = 1; valid && k < len; ++k) valid = (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80;
    if (valid) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out += '?';
      ++i;
    }
  }
  return out;
}

// At most max_chars characters (UTF-8 aware); longer text keeps its end ("…s/run-a"), where paths differ.
std::string shorten_tail(const std::string& s, size_t max_chars) {
  std::vector<size_t> starts;  // byte offset of each character
  for (size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xc0) != 0x80) starts.push_back(i);
  }
  if (starts.size() <= max_chars) return s;
  return "\u2026" + s.substr(starts[starts.size() - (max_chars - 1)]);
}

std::string shorten_end(const std::string& s, size_t max_chars) {
  size_t chars = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xc0) == 0x80) continue;
    if (++chars == max_chars) return s.substr(0, i) + "\u2026";
  }
  return s;
}

// ------------------------------------------------------------------------------------------------ series

std::vector<Point> finite_only(const std::vector<Point>& pts) {
  std::vector<Point> out;
  out.reserve(pts.size());
  for (const Point& p : pts) {
    if (std::isfinite(p.first) && std::isfinite(p.second)) out.push_back(p);
  }
  return out;
}

// Bias-corrected exponential moving average: ema_k / (1 - beta^k), so the curve starts at the first value.
std::vector<Point> ema(const std::vector<Point>& pts, double beta) {
  std::vector<Point> out;
  out.reserve(pts.size());
  double acc = 0, weight = 0;
  for (const Point& p : pts) {
    acc = beta * acc + (1 - beta) * p.second;
    weight = beta * weight + (1 - beta);
    out.emplace_back(p.first, acc / weight);
  }
  return out;
}

// Keeps the lowest and highest point of each of max_points / 2 equal-width buckets of [x_lo, x_hi], in input
// order, so spikes survive. Input sorted by x.
std::vector<Point> thin_min_max(const std::vector<Point>& pts, double x_lo, double x_hi, size_t max_points) {
  if (pts.size() <= max_points) return pts;
  const size_t buckets = max_points / 2;
  const double width = (x_hi - x_lo) / static_cast<double>(buckets);
  std::vector<Point> out;
  out.reserve(max_points);
  size_t i = 0;
  while (i < pts.size()) {
    const double rel = width > 0 ? (pts[i].first - x_lo) / width : 0.0;
    const size_t b = std::min(buckets - 1, static_cast<size_t>(std::max(0.0, rel)));
    const double bucket_end = x_lo + static_cast<double>(b + 1) * width;
    size_t lo = i, hi = i, j = i;
    for (; j < pts.size() && (b == buckets - 1 || pts[j].first < bucket_end); ++j) {
      if (pts[j].second < pts[lo].second) lo = j;
      if (pts[j].second > pts[hi].second) hi = j;
    }
    out.push_back(pts[std::min(lo, hi)]);
    if (lo != hi) out.push_back(pts[std::max(lo, hi)]);
    i = j;
  }
  return out;
}

// ------------------------------------------------------------------------------------------------ drawing

struct Panel {
  double left, top, width, height;
  Axis x, y;
  double px(double v) const { return left + (v - x.lo) / (x.hi - x.lo) * width; }
  double py(double v) const { return top + height - (v - y.lo) / (y.hi - y.lo) * height; }
};

// Canvas and layout in px (data areas; frames are kInset larger). The legend sits right of the plots, never on data.
constexpr double kWidth = 900, kHeight = 640;
constexpr double kInset = 6;
constexpr double kPlotLeft = 86, kPlotRight = 684;
constexpr double kLossTop = 56, kLossBottom = 384;
constexpr double kLrTop = 426, kLrBottom = 568;
constexpr double kLegendLeft = 708;
constexpr const char* kFont = "DejaVu Sans, Helvetica, Arial, sans-serif";

class SvgWriter {
 public:
  std::string& out() { return out_; }
  template <typename... Args>
  void line(fmt::format_string<Args...> f, Args&&... args) {
    out_ += fmt::format(f, std::forward<Args>(args)...);
    out_ += '\n';
  }
  void polyline(const std::vector<Point>& pts, const Panel& p, const std::string& attrs) {
    out_ += "<polyline fill=\"none\" " + attrs + " points=\"";
    for (size_t i = 0; i < pts.size(); ++i) {
      out_ += fmt::format("{}{:.2f},{:.2f}", i ? " " : "", p.px(pts[i].first), p.py(pts[i].second));
    }
    out_ += "\"/>\n";
  }

 private:
  std::string out_;
};

// Frame, grid, y tick labels, the rotated y title; x tick labels only when `x_labels` (the bottom panel). The
// frame and the clip region are the data area grown by kInset, so curves at the range ends and their markers stay
// clear of the frame line; the data area itself is an invisible rect "area-<id>" (tests read the mapping from it).
void draw_axes(SvgWriter& w, const Panel& p, const std::string& id, const std::string& y_title, bool x_labels,
               bool has_data) {
  const double fl = p.left - kInset, ft = p.top - kInset, fw = p.width + 2 * kInset, fh = p.height + 2 * kInset;
  w.line("<clipPath id=\"clip-{}\"><rect x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\"/></clipPath>",
         id, fl, ft, fw, fh);
  w.line("<rect id=\"area-{}\" x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"none\" "
         "stroke=\"none\"/>", id, p.left, p.top, p.width, p.height);
  w.line("<g id=\"grid-{}\" stroke=\"#e4e4e4\" stroke-width=\"1\">", id);
  for (double t : p.x.ticks) w.line("<line x1=\"{0:.2f}\" y1=\"{1:.2f}\" x2=\"{0:.2f}\" y2=\"{2:.2f}\"/>", p.px(t), ft,
                                    ft + fh);
  for (double t : p.y.ticks) w.line("<line x1=\"{1:.2f}\" y1=\"{0:.2f}\" x2=\"{2:.2f}\" y2=\"{0:.2f}\"/>", p.py(t), fl,
                                    fl + fw);
  w.line("</g>");
  w.line("<rect id=\"frame-{}\" x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"none\" "
         "stroke=\"#888\" stroke-width=\"1\"/>", id, fl, ft, fw, fh);
  w.line("<g font-size=\"11\" fill=\"#444\" text-anchor=\"end\">");
  for (double t : p.y.ticks) {
    w.line("<text x=\"{:.2f}\" y=\"{:.2f}\" dy=\"0.35em\">{}</text>", fl - 6, p.py(t), format_tick(t, p.y.step));
  }
  w.line("</g>");
  if (x_labels) {
    w.line("<g font-size=\"11\" fill=\"#444\" text-anchor=\"middle\">");
    for (double t : p.x.ticks) {
      w.line("<text x=\"{:.2f}\" y=\"{:.2f}\">{}</text>", p.px(t), ft + fh + 16, format_tick(t, p.x.step));
    }
    w.line("</g>");
  }
  const double cy = p.top + p.height / 2;
  w.line("<text x=\"20\" y=\"{0:.2f}\" font-size=\"12\" fill=\"#222\" text-anchor=\"middle\" "
         "transform=\"rotate(-90 20 {0:.2f})\">{1}</text>", cy, xml_escape(y_title));
  if (!has_data) {
    w.line("<text x=\"{:.2f}\" y=\"{:.2f}\" font-size=\"14\" fill=\"#999\" text-anchor=\"middle\">no data</text>",
           p.left + p.width / 2, cy);
  }
}

void draw_dot(SvgWriter& w, const Panel& p, const Point& pt, const char* colour, const char* fill, double r) {
  w.line("<circle cx=\"{:.2f}\" cy=\"{:.2f}\" r=\"{}\" fill=\"{}\" stroke=\"{}\" stroke-width=\"1.3\"/>",
         p.px(pt.first), p.py(pt.second), r, fill, colour);
}

void draw_legend(SvgWriter& w, const std::vector<RunSeries>& runs) {
  double y = kLossTop + 8;
  constexpr double kRow = 17;
  const double x0 = kLegendLeft, x1 = kLegendLeft + 26, tx = kLegendLeft + 32;
  w.line("<g id=\"legend\" font-size=\"12\" fill=\"#222\">");
  // The line styles once, in neutral grey; each run below is then only a colour.
  w.line("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#555\" stroke-width=\"2\"/>", x0, y, x1, y);
  w.line("<text x=\"{}\" y=\"{}\" dy=\"0.35em\">train (EMA {})</text>", tx, y, kEmaBeta);
  y += kRow;
  w.line("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#555\" stroke-opacity=\"0.3\" stroke-width=\"1\"/>",
         x0, y, x1, y);
  w.line("<text x=\"{}\" y=\"{}\" dy=\"0.35em\">train (raw)</text>", tx, y);
  y += kRow;
  w.line("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#555\" stroke-width=\"1.5\" "
         "stroke-dasharray=\"4 3\"/>", x0, y, x1, y);
  w.line("<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"#fff\" stroke=\"#555\" stroke-width=\"1.3\"/>", (x0 + x1) / 2,
         y);
  w.line("<text x=\"{}\" y=\"{}\" dy=\"0.35em\">val</text>", tx, y);
  y += kRow + 10;

  constexpr double kRunRows = 2;  // label, then "val 6.196 @ 1000" in small grey
  const double bottom = kHeight - 20;
  for (size_t r = 0; r < runs.size(); ++r) {
    if (y + kRunRows * kRow > bottom && r + 1 < runs.size()) {
      w.line("<text x=\"{}\" y=\"{}\" dy=\"0.35em\" fill=\"#666\">\u2026 {} more runs</text>", x0, y,
             runs.size() - r);
      break;
    }
    const char* colour = kPalette[r % kPaletteSize];
    w.line("<g class=\"legend-run\"><title>{}</title>", xml_escape(runs[r].label));
    w.line("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"3\"/>", x0, y, x1, y, colour);
    w.line("<text x=\"{}\" y=\"{}\" dy=\"0.35em\" font-weight=\"bold\">{}</text>", tx, y,
           xml_escape(shorten_tail(runs[r].label, 19)));
    const std::vector<Point> val = finite_only(runs[r].val_loss);
    if (!val.empty()) {
      w.line("<text x=\"{}\" y=\"{}\" dy=\"0.35em\" font-size=\"10.5\" fill=\"#666\">val {:.3f} @ {}</text>", tx,
             y + 14, val.back().second, format_tick(val.back().first, 1));
    }
    w.line("</g>");
    y += val.empty() ? kRow + 4 : kRunRows * kRow + 4;
  }
  if (runs.empty()) w.line("<text x=\"{}\" y=\"{}\" dy=\"0.35em\" fill=\"#666\">no runs</text>", x0, y);
  w.line("</g>");
}

}  // namespace

// ------------------------------------------------------------------------------------------------ public

RunSeries read_metrics_csv(const std::string& path, std::string label) {
  const std::string text = read_whole_file(path);
  RunSeries run;
  run.label = std::move(label);

  std::string header;  // the header line as written, to skip repeats of it
  std::vector<std::string_view> columns;
  size_t col[4] = {};  // indices of kRequiredColumns
  std::set<double> seen_steps;
  std::unordered_map<double, size_t> val_index;  // step -> index in run.val_loss

  size_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    const size_t nl = text.find('\n', pos);
    const bool terminated = nl != std::string::npos;
    std::string_view line(text.data() + pos, (terminated ? nl : text.size()) - pos);
    pos = terminated ? nl + 1 : text.size();
    ++line_no;
    DS_CHECK_AS(IoError, line.size() <= kMaxLineBytes, "[plot] '{}': line {} is {} bytes; the limit is {} KiB. "
                "This is not a metrics.csv written by `dspeed train`; pass that file.", path, line_no, line.size(),
                kMaxLineBytes >> 10);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line_no == 1) {
      if (line.substr(0, 3) == "\xEF\xBB\xBF") line.remove_prefix(3);  // UTF-8 byte-order mark
      header = line;
      columns = split_fields(header);
      for (size_t k = 0; k < 4; ++k) {
        const auto it = std::find(columns.begin(), columns.end(), kRequiredColumns[k]);
        DS_CHECK_AS(IoError, it != columns.end(), "[plot] '{}': line 1: the header has no column '{}'; found {}. "
                    "Expected a metrics.csv written by `dspeed train` (columns step, loss, val_loss, lr, ...).",
                    path, kRequiredColumns[k], join_quoted(columns));
        col[k] = static_cast<size_t>(it - columns.begin());
      }
      continue;
    }
    if (trim(line).empty() || line == header) continue;

    const std::vector<std::string_view> fields = split_fields(line);
    if (fields.size() != columns.size()) {
      if (!terminated && fields.size() < columns.size()) break;  // a row still being written by a live run
      DS_THROW(IoError, "[plot] '{}': line {} has {} fields; the header has {}. Fix or delete that line.", path,
               line_no, fields.size(), columns.size());
    }
    const std::optional<double> step = parse_number(fields[col[0]], path, line_no, "step");
    DS_CHECK_AS(IoError, step && std::isfinite(*step) && std::abs(*step) <= kMaxStep,
                "[plot] '{}': line {}, column 'step': expected a step number (at most 1e15), found '{}'. Fix or "
                "delete that line.", path, line_no, fields[col[0]]);
    const std::optional<double> loss = parse_number(fields[col[1]], path, line_no, "loss");
    const std::optional<double> val = parse_number(fields[col[2]], path, line_no, "val_loss");
    const std::optional<double> lr = parse_number(fields[col[3]], path, line_no, "lr");

    // A repeated step is the summary row: its val_loss replaces, its train loss and lr are not a new point.
    if (seen_steps.insert(*step).second) {
      if (plottable(loss)) run.train_loss.emplace_back(*step, *loss);
      if (plottable(lr)) run.lr.emplace_back(*step, *lr);
    }
    if (plottable(val)) {
      const auto [it, added] = val_index.try_emplace(*step, run.val_loss.size());
      if (added) {
        run.val_loss.emplace_back(*step, *val);
      } else {
        run.val_loss[it->second].second = *val;
      }
    }
  }
  DS_CHECK_AS(IoError, line_no > 0, "[plot] '{}': is empty; expected a metrics.csv written by `dspeed train`. "
              "Did the run start?", path);
  const auto by_step = [](const Point& a, const Point& b) { return a.first < b.first; };
  for (auto* s : {&run.train_loss, &run.val_loss, &run.lr}) std::stable_sort(s->begin(), s->end(), by_step);
  return run;
}

std::string render_loss_svg(const std::vector<RunSeries>& runs, const std::string& title) {
  struct Clean {
    std::vector<Point> train, val, lr;
  };
  std::vector<Clean> clean;
  clean.reserve(runs.size());
  double x_lo = INFINITY, x_hi = -INFINITY, loss_lo = INFINITY, loss_hi = -INFINITY, lr_lo = INFINITY,
         lr_hi = -INFINITY;
  for (const RunSeries& r : runs) {
    Clean c{finite_only(r.train_loss), finite_only(r.val_loss), finite_only(r.lr)};
    const auto by_step = [](const Point& a, const Point& b) { return a.first < b.first; };
    for (auto* s : {&c.train, &c.val, &c.lr}) {
      std::stable_sort(s->begin(), s->end(), by_step);
      for (const Point& p : *s) {
        x_lo = std::min(x_lo, p.first);
        x_hi = std::max(x_hi, p.first);
      }
    }
    for (auto* s : {&c.train, &c.val}) {
      for (const Point& p : *s) {
        loss_lo = std::min(loss_lo, p.second);
        loss_hi = std::max(loss_hi, p.second);
      }
    }
    for (const Point& p : c.lr) {
      lr_lo = std::min(lr_lo, p.second);
      lr_hi = std::max(lr_hi, p.second);
    }
    clean.push_back(std::move(c));
  }
  const bool has_loss = loss_lo <= loss_hi, has_lr = lr_lo <= lr_hi;

  const Axis x_axis = make_axis(x_lo, x_hi, 8, /*loose=*/false, /*min_step=*/1.0);  // steps are whole numbers
  const Panel loss{kPlotLeft, kLossTop, kPlotRight - kPlotLeft, kLossBottom - kLossTop, x_axis,
                   make_axis(loss_lo, loss_hi, 7, /*loose=*/true)};
  const Panel lr{kPlotLeft, kLrTop, kPlotRight - kPlotLeft, kLrBottom - kLrTop, x_axis,
                 make_axis(lr_lo, lr_hi, 4, /*loose=*/true)};

  SvgWriter w;
  w.line("<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>");
  w.line("<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{0}\" height=\"{1}\" "
         "viewBox=\"0 0 {0} {1}\" font-family=\"{2}\">", kWidth, kHeight, kFont);
  w.line("<title>{}</title>", xml_escape(title));
  w.line("<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>");
  w.line("<text x=\"{}\" y=\"30\" font-size=\"16\" font-weight=\"bold\" fill=\"#222\" text-anchor=\"middle\">{}"
         "</text>", kWidth / 2, xml_escape(shorten_end(title, 72)));

  draw_axes(w, loss, "loss", "loss (nats/token)", /*x_labels=*/false, has_loss);
  draw_axes(w, lr, "lr", "learning rate", /*x_labels=*/true, has_lr);
  w.line("<text x=\"{:.2f}\" y=\"{:.2f}\" font-size=\"12\" fill=\"#222\" text-anchor=\"middle\">step</text>",
         kPlotLeft + (kPlotRight - kPlotLeft) / 2, kLrBottom + kInset + 34);

  // Data: every run's raw train first, then the smoothed curves, then validation, so no run's light raw line covers
  // another's smoothed one. A one-point series gets a dot, as its polyline draws nothing.
  const auto thin = [&](const std::vector<Point>& s) { return thin_min_max(s, x_axis.lo, x_axis.hi,
                                                                           kMaxPolylinePoints); };
  w.line("<g clip-path=\"url(#clip-loss)\" stroke-linejoin=\"round\">");
  for (size_t r = 0; r < clean.size(); ++r) {
    if (clean[r].train.empty()) continue;
    w.polyline(thin(clean[r].train), loss, fmt::format("class=\"train-raw\" stroke=\"{}\" stroke-opacity=\"0.3\" "
                                                        "stroke-width=\"1\"", kPalette[r % kPaletteSize]));
  }
  for (size_t r = 0; r < clean.size(); ++r) {
    const char* colour = kPalette[r % kPaletteSize];
    if (clean[r].train.empty()) continue;
    w.polyline(thin(ema(clean[r].train, kEmaBeta)), loss,
               fmt::format("class=\"train-ema\" stroke=\"{}\" stroke-width=\"2\"", colour));
    if (clean[r].train.size() == 1) draw_dot(w, loss, clean[r].train[0], colour, colour, 2.5);
  }
  for (size_t r = 0; r < clean.size(); ++r) {
    const char* colour = kPalette[r % kPaletteSize];
    if (clean[r].val.empty()) continue;
    const std::vector<Point> val = thin(clean[r].val);
    w.polyline(val, loss, fmt::format("class=\"val\" stroke=\"{}\" stroke-width=\"1.5\" stroke-dasharray=\"5 3\"",
                                      colour));
    if (val.size() <= kMaxValMarkers) {
      for (const Point& p : val) draw_dot(w, loss, p, colour, "#fff", 3);
    }
  }
  w.line("</g>");
  w.line("<g clip-path=\"url(#clip-lr)\" stroke-linejoin=\"round\">");
  for (size_t r = 0; r < clean.size(); ++r) {
    const char* colour = kPalette[r % kPaletteSize];
    if (clean[r].lr.empty()) continue;
    w.polyline(thin(clean[r].lr), lr, fmt::format("class=\"lr\" stroke=\"{}\" stroke-width=\"1.5\"", colour));
    if (clean[r].lr.size() == 1) draw_dot(w, lr, clean[r].lr[0], colour, colour, 2.5);
  }
  w.line("</g>");

  draw_legend(w, runs);
  w.line("</svg>");
  return std::move(w.out());
}

void write_loss_svg(const std::vector<RunSeries>& runs, const std::string& title, const std::string& path) {
  const std::string svg = render_loss_svg(runs, title);
  AtomicFileWriter out(path, "plot");
  out.write(svg.data(), svg.size());
  out.commit();
}

std::vector<std::string> run_labels(const std::vector<std::string>& run_dirs) {
  std::vector<std::string> full, labels;
  for (const std::string& d : run_dirs) {
    fs::path p = fs::absolute(fs::path(d)).lexically_normal();
    if (p.filename().empty() && p.has_relative_path()) p = p.parent_path();  // "runs/a/" -> "runs/a"
    std::error_code ec;
    if (fs::is_regular_file(p, ec)) p = p.parent_path();  // a metrics.csv given directly: its run directory
    full.push_back(p.string());
    labels.push_back(p.filename().empty() ? p.string() : p.filename().string());
  }
  std::map<std::string, int> count;
  for (const std::string& l : labels) ++count[l];
  for (size_t i = 0; i < labels.size(); ++i) {
    if (count[labels[i]] > 1) labels[i] = full[i];
  }
  return labels;
}

std::string run_plot(const PlotOptions& o) {
  DS_CHECK_AS(ConfigError, !o.run_dirs.empty(), "[plot] no run directories given; pass at least one folder "
              "written by `dspeed train --out DIR`.");
  const std::vector<std::string> labels = run_labels(o.run_dirs);
  std::vector<RunSeries> runs;
  for (size_t i = 0; i < o.run_dirs.size(); ++i) {
    std::error_code ec;
    const bool is_file = fs::is_regular_file(o.run_dirs[i], ec);
    const std::string csv = is_file ? o.run_dirs[i] : (fs::path(o.run_dirs[i]) / "metrics.csv").string();
    runs.push_back(read_metrics_csv(csv, labels[i]));
  }

  std::string out = o.out;
  if (out.empty()) {
    if (runs.size() > 1) {
      out = "loss.svg";
    } else {
      std::error_code ec;
      const fs::path d(o.run_dirs[0]);
      out = ((fs::is_regular_file(d, ec) ? d.parent_path() : d) / "loss.svg").string();
    }
  }
  std::string title = o.title;
  if (title.empty()) {
    std::string joined;
    for (const std::string& l : labels) joined += (joined.empty() ? "" : ", ") + l;
    title = runs.size() == 1 ? "training run " + joined
            : joined.size() <= 70 ? "training runs " + joined
                                  : fmt::format("{} training runs", runs.size());
  }
  write_loss_svg(runs, title, out);
  return out;
}

}  // namespace ds::app
