// Element-wise kernels vs plain loops: add (also aliased), add_inplace, scale_inplace, and sum_squares vs a
// double reference, bit-identical for one and two threads.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/random_values.h"
#include "ds/kernels/cpu/kernels.h"

namespace {

using ds::testing::randn;

TEST(Elementwise, AddVariants) {
  for (size_t n : {size_t{0}, size_t{3}, size_t{17}, size_t{100001}}) {
    const auto a = randn(n, 1), b = randn(n, 2);
    std::vector<float> out(n);
    ds::cpu::add(out.data(), a.data(), b.data(), n);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], a[i] + b[i]);
    auto y = a;
    ds::cpu::add(y.data(), y.data(), b.data(), n);
    EXPECT_EQ(y, out);
    y = b;
    ds::cpu::add(y.data(), a.data(), y.data(), n);
    EXPECT_EQ(y, out);
    y = a;
    ds::cpu::add_inplace(y.data(), b.data(), n);
    EXPECT_EQ(y, out);
    y = a;
    ds::cpu::scale_inplace(y.data(), -0.375f, n);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(y[i], a[i] * -0.375f);
  }
}

TEST(Elementwise, SumSquaresMatchesDoubleAndIgnoresThreadCount) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{15}, size_t{65536}, size_t{1000003}}) {
    const auto x = randn(n, n + 7);
    double ref = 0;
    for (float v : x) ref += double(v) * double(v);
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    const double s1 = ds::cpu::sum_squares(x.data(), n);
    omp_set_num_threads(2);
    const double s2 = ds::cpu::sum_squares(x.data(), n);
    omp_set_num_threads(saved);
    EXPECT_NEAR(s1, ref, 1e-12 * (1 + ref));
    EXPECT_EQ(s1, s2);
  }
}

}  // namespace
