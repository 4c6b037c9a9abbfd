// Tests of `dspeed plot`'s library half: the metrics.csv rules (summary row, columns by name, skipped values, errors
// that name the line) against literal expected series, and the SVG against coordinates computed here from the axis
// ranges the data forces (0..100 steps, loss 0..10, lr 0..2e-3) and the data-area rects the chart exposes, so a
// wrong mapping, a lost spike or an unescaped title fails.
#include "ds/app/plot.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "ds/core/error.h"

namespace ds::app {
namespace {

namespace fs = std::filesystem;
using Points = std::vector<std::pair<double, double>>;

constexpr const char* kHeader =
    "step,loss,val_loss,lr,grad_norm,tokens_per_s,peak_param_mib,peak_grad_mib,peak_optimizer_mib,"
    "peak_activation_mib,peak_workspace_mib,peak_device_mib,peak_rss_mib\n";

// A metrics row as `dspeed train` writes it; val "" for steps without validation.
std::string row(int step, const std::string& loss, const std::string& val, const std::string& lr) {
  return std::to_string(step) + "," + loss + "," + val + "," + lr + ",0.5,1000.0,1,1,1,1,1,1,1\n";
}

class PlotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("ds_plot_test_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    const fs::path p = dir_ / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }

  fs::path dir_;
};

// Runs fn expecting an IoError whose message starts with "[plot]" and holds every fragment.
template <typename Fn>
void expect_io_error(Fn&& fn, std::initializer_list<std::string> fragments) {
  try {
    fn();
    ADD_FAILURE() << "no exception";
  } catch (const IoError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("[plot]", 0), 0u) << msg;
    for (const auto& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << "missing '" << f << "' in: " << msg;
  }
}

// ------------------------------------------------------------------------------------------------ SVG helpers

struct Rect {
  double x, y, w, h;
};

Rect area(const std::string& svg, const std::string& panel) {
  const std::regex re("id=\"area-" + panel + "\" x=\"([-0-9.]+)\" y=\"([-0-9.]+)\" width=\"([-0-9.]+)\" "
                      "height=\"([-0-9.]+)\"");
  std::smatch m;
  EXPECT_TRUE(std::regex_search(svg, m, re)) << "no area-" << panel;
  if (m.empty()) return {0, 0, 1, 1};
  return {std::stod(m[1]), std::stod(m[2]), std::stod(m[3]), std::stod(m[4])};
}

// The points of every polyline of the given class, in document order.
std::vector<Points> polylines(const std::string& svg, const std::string& cls) {
  // Plain searching: std::regex recurses per character and overflows the stack on a long points list.
  std::vector<Points> out;
  for (size_t at = svg.find("<polyline"); at != std::string::npos; at = svg.find("<polyline", at + 1)) {
    const size_t tag_end = svg.find('>', at);
    const std::string tag = svg.substr(at, tag_end - at);
    if (tag.find("class=\"" + cls + "\"") == std::string::npos) continue;
    const size_t p = tag.find("points=\"");
    if (p == std::string::npos) continue;
    Points pts;
    std::string s = tag.substr(p + 8, tag.find('"', p + 8) - (p + 8));
    for (size_t pos = 0; pos < s.size();) {
      size_t end = s.find(' ', pos);
      if (end == std::string::npos) end = s.size();
      const std::string pair = s.substr(pos, end - pos);
      const size_t comma = pair.find(',');
      pts.emplace_back(std::stod(pair.substr(0, comma)), std::stod(pair.substr(comma + 1)));
      pos = end + 1;
    }
    out.push_back(std::move(pts));
  }
  return out;
}

bool has_point(const Points& pts, double x, double y) {
  for (const auto& [px, py] : pts) {
    if (std::abs(px - x) < 0.011 && std::abs(py - y) < 0.011) return true;
  }
  return false;
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t pos = s.find(what); pos != std::string::npos; pos = s.find(what, pos + 1)) ++n;
  return n;
}

// ------------------------------------------------------------------------------------------------ reading

TEST_F(PlotTest, SummaryRowAddsValidationButNotTrainLoss) {
  const std::string path = write("metrics.csv", std::string(kHeader) + row(1, "10.5", "", "1.000000e-04") +
                                                    row(2, "9.5", "9.25", "2.000000e-04") +
                                                    row(3, "8.5", "", "3.000000e-04") +
                                                    row(3, "9.0", "8.75", "3.100000e-04"));  // summary of step 3
  const RunSeries r = read_metrics_csv(path, "run");
  EXPECT_EQ(r.label, "run");
  EXPECT_EQ(r.train_loss, (Points{{1, 10.5}, {2, 9.5}, {3, 8.5}}));
  EXPECT_EQ(r.val_loss, (Points{{2, 9.25}, {3, 8.75}}));
  EXPECT_EQ(r.lr, (Points{{1, 1e-4}, {2, 2e-4}, {3, 3e-4}}));
}

TEST_F(PlotTest, SummaryValidationReplacesThePeriodicOneOfItsStep) {
  const std::string path = write("metrics.csv", std::string(kHeader) + row(1, "3", "", "1e-3") +
                                                    row(2, "2", "2.5", "1e-3") + row(2, "2.2", "2.4", "1e-3"));
  const RunSeries r = read_metrics_csv(path, "run");
  EXPECT_EQ(r.val_loss, (Points{{2, 2.4}}));
  EXPECT_EQ(r.train_loss, (Points{{1, 3}, {2, 2}}));
}

TEST_F(PlotTest, ColumnsAreFoundByNameAndOthersIgnored) {
  // Reordered, one unknown column, the memory columns missing, CRLF line ends, a resumed run (steps from 501).
  const std::string path = write("metrics.csv", "lr,note,val_loss,loss,step\r\n"
                                                "5e-4,x,,4.5,501\r\n"
                                                "4e-4,y,4.25,4.0,502\r\n");
  const RunSeries r = read_metrics_csv(path, "resumed");
  EXPECT_EQ(r.train_loss, (Points{{501, 4.5}, {502, 4.0}}));
  EXPECT_EQ(r.val_loss, (Points{{502, 4.25}}));
  EXPECT_EQ(r.lr, (Points{{501, 5e-4}, {502, 4e-4}}));
}

TEST_F(PlotTest, NonFiniteAndEmptyValuesAreSkipped) {
  const std::string path = write("metrics.csv", std::string(kHeader) + row(1, "nan", "inf", "1e-3") +
                                                    row(2, "2.0", "", "") + row(3, "-inf", "1.5", "NaN"));
  const RunSeries r = read_metrics_csv(path, "run");
  EXPECT_EQ(r.train_loss, (Points{{2, 2.0}}));
  EXPECT_EQ(r.val_loss, (Points{{3, 1.5}}));
  EXPECT_EQ(r.lr, (Points{{1, 1e-3}}));
  // Finite but past any loss or rate (1e30): skipped too, so the axes stay finite and the SVG holds no NaN.
  const std::string huge = write("huge.csv", std::string(kHeader) + row(1, "1.7e308", "-1e300", "1e-3") +
                                                 row(2, "2.0", "1.5", "1e299"));
  const RunSeries h = read_metrics_csv(huge, "huge");
  EXPECT_EQ(h.train_loss, (Points{{2, 2.0}}));
  EXPECT_EQ(h.val_loss, (Points{{2, 1.5}}));
  EXPECT_EQ(h.lr, (Points{{1, 1e-3}}));
  const std::string svg = render_loss_svg({h}, "huge");
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.find("inf"), std::string::npos);
  EXPECT_THROW(read_metrics_csv(write("step.csv", std::string(kHeader) + "1e300,2.0,,,0.5,1000.0,1,1,1,1,1,1,1\n"), "s"),
               IoError);
}

TEST_F(PlotTest, RepeatedHeaderAndUnterminatedPartialRowAreSkipped) {
  // Two files concatenated, and a live run's last row cut off mid-write (no newline, too few fields).
  const std::string path = write("metrics.csv", std::string(kHeader) + row(1, "3", "", "1e-3") + kHeader +
                                                    row(2, "2", "", "1e-3") + "3,1.9");
  const RunSeries r = read_metrics_csv(path, "run");
  EXPECT_EQ(r.train_loss, (Points{{1, 3}, {2, 2}}));
}

TEST_F(PlotTest, MissingFileIsAnIoError) {
  const std::string path = (dir_ / "nope" / "metrics.csv").string();
  expect_io_error([&] { read_metrics_csv(path, "x"); }, {path, "cannot open"});
}

TEST_F(PlotTest, MissingColumnNamesTheColumnAndLine) {
  const std::string path = write("metrics.csv", "step,loss,lr\n1,2,3\n");
  expect_io_error([&] { read_metrics_csv(path, "x"); }, {path, "line 1", "'val_loss'", "'step', 'loss', 'lr'"});
}

TEST_F(PlotTest, MalformedNumberNamesFileLineAndColumn) {
  const std::string path = write("metrics.csv", std::string(kHeader) + row(1, "3", "", "1e-3") +
                                                    row(2, "2.5x", "", "1e-3"));
  expect_io_error([&] { read_metrics_csv(path, "x"); }, {path, "line 3", "'loss'", "'2.5x'"});
  const std::string bad_step = write("b.csv", std::string(kHeader) + row(1, "3", "", "1e-3") +
                                                  ",2,,1e-3,0.5,1000.0,1,1,1,1,1,1,1\n");
  expect_io_error([&] { read_metrics_csv(bad_step, "x"); }, {"line 3", "'step'"});
}

TEST_F(PlotTest, WrongFieldCountNamesTheLine) {
  const std::string path = write("metrics.csv", std::string(kHeader) + row(1, "3", "", "1e-3") + "2,3,,1e-3\n" +
                                                    row(3, "3", "", "1e-3"));
  expect_io_error([&] { read_metrics_csv(path, "x"); }, {"line 3", "4 fields", "13"});
}

TEST_F(PlotTest, OverlongLineAndOversizedFileAreRefused) {
  const std::string path = write("metrics.csv", std::string(kHeader) + std::string(70000, '1') + "\n");
  expect_io_error([&] { read_metrics_csv(path, "x"); }, {"line 2", "64 KiB"});
  const std::string big = write("big.csv", kHeader);
  fs::resize_file(big, (size_t{256} << 20) + 1);  // sparse: refused by size before any read
  expect_io_error([&] { read_metrics_csv(big, "x"); }, {"256 MiB"});
}

// ------------------------------------------------------------------------------------------------ rendering

// Steps 0..100, loss 0..10 and lr 0..2e-3: ranges that are already whole tick steps, so the axes show exactly them.
RunSeries mapped_run(const std::string& label) {
  RunSeries r;
  r.label = label;
  r.train_loss = {{0, 0}, {50, 5}, {100, 10}};
  r.val_loss = {{50, 2.5}, {100, 7.5}};
  r.lr = {{0, 0}, {50, 1e-3}, {100, 2e-3}};
  return r;
}

TEST(PlotRender, PointsLandWhereTheAxisRangesPutThem) {
  const std::string svg = render_loss_svg({mapped_run("a")}, "t");
  const Rect l = area(svg, "loss"), r = area(svg, "lr");
  const auto raw = polylines(svg, "train-raw"), val = polylines(svg, "val"), lr = polylines(svg, "lr");
  ASSERT_EQ(raw.size(), 1u);
  ASSERT_EQ(val.size(), 1u);
  ASSERT_EQ(lr.size(), 1u);
  EXPECT_TRUE(has_point(raw[0], l.x, l.y + l.h));                          // (0, 0): bottom left
  EXPECT_TRUE(has_point(raw[0], l.x + l.w / 2, l.y + l.h / 2));            // (50, 5): centre
  EXPECT_TRUE(has_point(raw[0], l.x + l.w, l.y));                          // (100, 10): top right
  EXPECT_TRUE(has_point(val[0], l.x + l.w / 2, l.y + 0.75 * l.h));         // (50, 2.5)
  EXPECT_TRUE(has_point(val[0], l.x + l.w, l.y + 0.25 * l.h));             // (100, 7.5)
  EXPECT_TRUE(has_point(lr[0], r.x + r.w / 2, r.y + r.h / 2));             // (50, 1e-3)
  // The two panels share the step axis.
  EXPECT_DOUBLE_EQ(l.x, r.x);
  EXPECT_DOUBLE_EQ(l.w, r.w);
  // Tick labels: 1/2/5 steps, learning rates in short scientific form.
  for (const char* t : {">0<", ">2<", ">10<", ">50<", ">100<", ">1e-3<", ">2e-3<"}) {
    EXPECT_NE(svg.find(t), std::string::npos) << t;
  }
}

TEST(PlotRender, SmoothedTrainLossIsTheBiasCorrectedEma) {
  RunSeries run;
  run.label = "a";
  run.train_loss = {{0, 0}, {100, 10}};
  const std::string svg = render_loss_svg({run}, "t");
  const Rect l = area(svg, "loss");
  const auto ema = polylines(svg, "train-ema");
  ASSERT_EQ(ema.size(), 1u);
  ASSERT_EQ(ema[0].size(), 2u);
  // Weights 0.9 and 1 on the two values: (0.9 * 0 + 1 * 10) / 1.9.
  const double second = 10 / 1.9;
  EXPECT_TRUE(has_point(ema[0], l.x, l.y + l.h));
  EXPECT_TRUE(has_point(ema[0], l.x + l.w, l.y + l.h * (1 - second / 10)));
}

TEST(PlotRender, OnePolylinePerSeriesAndALegendEntryPerRun) {
  RunSeries b = mapped_run("second-run");
  b.val_loss.clear();  // an empty series draws nothing
  const std::string svg = render_loss_svg({mapped_run("first-run"), b}, "t");
  EXPECT_EQ(polylines(svg, "train-raw").size(), 2u);
  EXPECT_EQ(polylines(svg, "train-ema").size(), 2u);
  EXPECT_EQ(polylines(svg, "val").size(), 1u);
  EXPECT_EQ(polylines(svg, "lr").size(), 2u);
  EXPECT_EQ(count(svg, "<polyline"), 7u);
  EXPECT_NE(svg.find(">first-run</text>"), std::string::npos);
  EXPECT_NE(svg.find(">second-run</text>"), std::string::npos);
  EXPECT_NE(svg.find(">train (EMA 0.9)</text>"), std::string::npos);
  EXPECT_NE(svg.find(">val</text>"), std::string::npos);
  // Distinct colours per run.
  EXPECT_NE(svg.find("class=\"lr\" stroke=\"#1f77b4\""), std::string::npos);
  EXPECT_NE(svg.find("class=\"lr\" stroke=\"#ff7f0e\""), std::string::npos);
}

TEST(PlotRender, TitleAndLabelsAreEscaped) {
  RunSeries r = mapped_run("x<y>&\"z\"\x01\xff");
  const std::string svg = render_loss_svg({r}, "loss <gpt2> & 'friends'");
  EXPECT_NE(svg.find("loss &lt;gpt2&gt; &amp; &apos;friends&apos;"), std::string::npos);
  EXPECT_NE(svg.find("x&lt;y&gt;&amp;&quot;z&quot;??"), std::string::npos);
  EXPECT_EQ(svg.find("<gpt2>"), std::string::npos);
  EXPECT_EQ(svg.find('\x01'), std::string::npos);
}

TEST(PlotRender, LongSeriesAreThinnedButKeepTheirSpike) {
  RunSeries r;
  r.label = "long";
  constexpr int kSteps = 100000;
  for (int s = 0; s <= kSteps; ++s) r.train_loss.emplace_back(s, s == 61234 ? 10.0 : 0.5 * ((s * 7) % 3));
  const std::string svg = render_loss_svg({r}, "t");
  const Rect l = area(svg, "loss");
  const auto raw = polylines(svg, "train-raw");
  ASSERT_EQ(raw.size(), 1u);
  EXPECT_LE(raw[0].size(), 2000u);
  EXPECT_GE(raw[0].size(), 1000u);
  // Loss axis 0..10 (data 0..10): the spike is the top edge, at step 61234.
  EXPECT_TRUE(has_point(raw[0], l.x + l.w * 61234 / kSteps, l.y));
  for (const auto& [x, y] : raw[0]) {
    ASSERT_GE(x, l.x - 0.01);
    ASSERT_LE(x, l.x + l.w + 0.01);
  }
}

TEST(PlotRender, EmptySinglePointAndConstantRunsDrawCleanly) {
  const std::string empty = render_loss_svg({}, "nothing");
  EXPECT_EQ(count(empty, ">no data<"), 2u);
  EXPECT_EQ(count(empty, "<polyline"), 0u);

  RunSeries one{"one", {{5, 3.0}}, {}, {{5, 1e-3}}};
  RunSeries flat{"flat", {}, {}, {}};
  for (int s = 1; s <= 10; ++s) flat.train_loss.emplace_back(s, 2.0);
  RunSeries bad{"bad", {{1, NAN}, {2, INFINITY}}, {}, {}};
  for (const auto& runs : {std::vector<RunSeries>{one}, {flat}, {bad}}) {
    const std::string svg = render_loss_svg(runs, "edge");
    EXPECT_EQ(svg.find("nan"), std::string::npos);
    EXPECT_EQ(svg.find("inf"), std::string::npos);
    EXPECT_EQ(svg.rfind("</svg>\n"), svg.size() - 7);
  }
  // A single point is a dot at the panel centre (its padded ranges are symmetric around it).
  const std::string svg = render_loss_svg({one}, "edge");
  const Rect l = area(svg, "loss");
  EXPECT_NE(svg.find(fmt::format("cx=\"{:.2f}\" cy=\"{:.2f}\"", l.x + l.w / 2, l.y + l.h / 2)), std::string::npos);
  // A constant series is a horizontal line in the middle.
  const std::string flat_svg = render_loss_svg({flat}, "edge");
  const Rect f = area(flat_svg, "loss");
  const auto raw = polylines(flat_svg, "train-raw");
  ASSERT_EQ(raw.size(), 1u);
  EXPECT_TRUE(has_point(raw[0], f.x, f.y + f.h / 2));
  EXPECT_EQ(count(render_loss_svg({bad}, "edge"), ">no data<"), 2u);
}

// ------------------------------------------------------------------------------------------------ files

TEST_F(PlotTest, WriteIsAtomicAndFailsClearly) {
  const std::string path = (dir_ / "loss.svg").string();
  write_loss_svg({mapped_run("a")}, "t", path);
  std::ifstream in(path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, render_loss_svg({mapped_run("a")}, "t"));
  size_t files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir_)) ++files;
  EXPECT_EQ(files, 1u);  // no temp file left behind
  EXPECT_THROW(write_loss_svg({}, "t", (dir_ / "missing" / "loss.svg").string()), IoError);
}

TEST_F(PlotTest, LabelsAreDirectoryNamesUnlessTheyCollide) {
  const fs::path cwd = fs::current_path();
  const std::vector<std::string> labels = run_labels({"x/a", "y/b/", "z/a"});
  EXPECT_EQ(labels, (std::vector<std::string>{(cwd / "x" / "a").string(), "b", (cwd / "z" / "a").string()}));
  const std::string csv = write("r1/metrics.csv", std::string(kHeader) + row(1, "3", "", "1e-3"));
  EXPECT_EQ(run_labels({csv}), std::vector<std::string>{"r1"});
}

TEST_F(PlotTest, RunPlotWritesBesideASingleRun) {
  write("r1/metrics.csv", std::string(kHeader) + row(1, "3", "", "1e-3") + row(2, "2", "2.5", "1e-3"));
  PlotOptions o;
  o.run_dirs = {(dir_ / "r1").string()};
  const std::string out = run_plot(o);
  EXPECT_EQ(out, (dir_ / "r1" / "loss.svg").string());
  std::ifstream in(out);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find(">r1</text>"), std::string::npos);
  EXPECT_EQ(polylines(text, "val").size(), 1u);
  o.run_dirs.push_back((dir_ / "nope").string());
  expect_io_error([&] { run_plot(o); }, {"nope", "metrics.csv"});
}

}  // namespace
}  // namespace ds::app
