// The Prometheus exposition, read back by a small parser written here from the text format's rules: every sample
// has a # HELP and # TYPE of its family, counters and gauges carry the snapshot's values, and histogram buckets are
// cumulative counts computed by hand from the observations.
#include "ds/serve/metrics.h"

#include <gtest/gtest.h>

#include <map>
#include <sstream>

namespace ds::serve {
namespace {

struct Exposition {
  std::map<std::string, double> samples;      // "name{labels}" -> value
  std::map<std::string, std::string> types;   // family -> type
  std::map<std::string, std::string> helps;   // family -> help
  std::vector<std::string> order;             // sample keys in order
};

Exposition parse(const std::string& text) {
  Exposition e;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line.rfind("# HELP ", 0) == 0) {
      const std::string rest = line.substr(7);
      const size_t sp = rest.find(' ');
      e.helps[rest.substr(0, sp)] = rest.substr(sp + 1);
    } else if (line.rfind("# TYPE ", 0) == 0) {
      const std::string rest = line.substr(7);
      const size_t sp = rest.find(' ');
      const std::string family = rest.substr(0, sp);
      EXPECT_FALSE(e.types.count(family)) << "second TYPE line for " << family;
      e.types[family] = rest.substr(sp + 1);
    } else {
      EXPECT_NE(line[0], '#') << line;
      const size_t sp = line.rfind(' ');
      EXPECT_NE(sp, std::string::npos) << line;
      const std::string key = line.substr(0, sp);
      e.samples[key] = std::stod(line.substr(sp + 1));
      e.order.push_back(key);
    }
  }
  return e;
}

std::string family_of(const std::string& key, const Exposition& e) {
  std::string name = key.substr(0, key.find('{'));
  if (e.types.count(name)) return name;
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    const std::string s(suffix);
    if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
      return name.substr(0, name.size() - s.size());
    }
  }
  return name;
}

TEST(Metrics, CountersGaugesAndCumulativeHistograms) {
  inference::LoopStats s;
  s.requests_accepted = 11;
  s.requests_finished = 7;
  s.requests_cancelled = 2;
  s.prompt_tokens = 300;
  s.completion_tokens = 150;
  s.waiting = 1;
  s.running = 3;
  s.kv_blocks_used = 9;
  s.kv_blocks_free = 55;
  s.preemptions = 4;
  s.passes = 77;
  s.pass_tokens = 420;
  // Bounds 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60.
  for (double v : {0.0005, 0.002, 0.002, 0.7, 100.0}) s.time_to_first_token_s.observe(v);
  s.time_per_output_token_s.observe(0.01);  // exactly on a bound: counted in that bucket (le)
  HttpCounters http{5, 6};

  const Exposition e = parse(render_metrics(s, http));
  for (const std::string& key : e.order) {
    const std::string family = family_of(key, e);
    EXPECT_TRUE(e.types.count(family)) << "no # TYPE for " << key;
    EXPECT_TRUE(e.helps.count(family)) << "no # HELP for " << key;
  }
  EXPECT_EQ(e.samples.at("dspeed_requests_total"), 11);
  EXPECT_EQ(e.samples.at("dspeed_requests_rejected_total{reason=\"queue_full\"}"), 5);
  EXPECT_EQ(e.samples.at("dspeed_requests_rejected_total{reason=\"invalid\"}"), 6);
  EXPECT_EQ(e.samples.at("dspeed_requests_finished_total"), 7);
  EXPECT_EQ(e.samples.at("dspeed_requests_cancelled_total"), 2);
  EXPECT_EQ(e.samples.at("dspeed_prompt_tokens_total"), 300);
  EXPECT_EQ(e.samples.at("dspeed_generation_tokens_total"), 150);
  EXPECT_EQ(e.samples.at("dspeed_queue_depth"), 1);
  EXPECT_EQ(e.samples.at("dspeed_running_sequences"), 3);
  EXPECT_EQ(e.samples.at("dspeed_kv_blocks_used"), 9);
  EXPECT_EQ(e.samples.at("dspeed_kv_blocks_free"), 55);
  EXPECT_EQ(e.samples.at("dspeed_preemptions_total"), 4);
  EXPECT_EQ(e.samples.at("dspeed_forward_passes_total"), 77);
  EXPECT_EQ(e.types.at("dspeed_requests_total"), "counter");
  EXPECT_EQ(e.types.at("dspeed_kv_blocks_used"), "gauge");
  EXPECT_EQ(e.types.at("dspeed_time_to_first_token_seconds"), "histogram");

  const std::string t = "dspeed_time_to_first_token_seconds";
  auto bucket = [&](const std::string& name, const char* le) {
    return e.samples.at(name + "_bucket{le=\"" + le + "\"}");
  };
  EXPECT_EQ(bucket(t, "0.001"), 1);
  EXPECT_EQ(bucket(t, "0.0025"), 3);
  EXPECT_EQ(bucket(t, "0.5"), 3);
  EXPECT_EQ(bucket(t, "1"), 4);
  EXPECT_EQ(bucket(t, "60"), 4);
  EXPECT_EQ(bucket(t, "+Inf"), 5);
  EXPECT_EQ(e.samples.at(t + "_count"), 5);
  EXPECT_NEAR(e.samples.at(t + "_sum"), 0.0005 + 0.002 + 0.002 + 0.7 + 100.0, 1e-9);

  const std::string p = "dspeed_time_per_output_token_seconds";
  EXPECT_EQ(bucket(p, "0.005"), 0);
  EXPECT_EQ(bucket(p, "0.01"), 1);
  EXPECT_EQ(bucket(p, "+Inf"), 1);

  // Cumulative buckets never decrease, in the order written.
  double prev = -1;
  for (const std::string& key : e.order) {
    if (key.rfind(t + "_bucket", 0) != 0) continue;
    EXPECT_GE(e.samples.at(key), prev) << key;
    prev = e.samples.at(key);
  }
}

}  // namespace
}  // namespace ds::serve
