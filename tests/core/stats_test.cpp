// median against hand-worked values (odd, even, unsorted, empty); seconds_since and peak_rss_mib for sanity only,
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
