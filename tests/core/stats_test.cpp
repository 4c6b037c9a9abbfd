// median and percentile against hand-worked values (odd, even, unsorted, empty); seconds_since and peak_rss_mib for sanity only,
// since their exact values depend on the machine.
#include "ds/core/stats.h"

#include <gtest/gtest.h>

#include <cmath>
#include <thread>

namespace ds {
namespace {

TEST(Stats, Median) {
  EXPECT_TRUE(std::isnan(median({})));
  EXPECT_EQ(median({4.0}), 4.0);
  EXPECT_EQ(median({3.0, 1.0, 2.0}), 2.0);
  EXPECT_EQ(median({4.0, 1.0, 3.0, 2.0}), 2.5);  // mean of the middle two
  EXPECT_EQ(median({5.0, 5.0, 1.0, 9.0, 5.0}), 5.0);
}

// Hand-worked with numpy's linear rule: rank q * (n - 1), interpolated.
TEST(Stats, Percentile) {
  EXPECT_TRUE(std::isnan(percentile({}, 0.5)));
  EXPECT_EQ(percentile({7.0}, 0.95), 7.0);
  EXPECT_DOUBLE_EQ(percentile({4.0, 1.0, 3.0, 2.0}, 0.5), 2.5);
  std::vector<double> v;
  for (int i = 20; i >= 1; --i) v.push_back(i);
  EXPECT_DOUBLE_EQ(percentile(v, 0.95), 19.05);  // rank 18.05 between 19 and 20
  EXPECT_DOUBLE_EQ(percentile(v, 0.0), 1.0);
  EXPECT_DOUBLE_EQ(percentile(v, 1.0), 20.0);
}

TEST(Stats, SecondsSinceAndPeakRss) {
  const auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const double s = seconds_since(t0);
  EXPECT_GE(s, 0.019);
  EXPECT_LT(s, 10.0);
  EXPECT_GT(peak_rss_mib(), 1.0);  // a gtest process is megabytes
}

}  // namespace
}  // namespace ds
