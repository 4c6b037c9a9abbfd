// 16-bit conversions vs bit-exact scalar references written here (integer rounding, no intrinsics): special
// values, round-to-nearest-even ties, overflow to inf, fp16 subnormals, NaN stays NaN with its sign, all 65536
// fp16 and bf16 inputs, and a million random float bit patterns at lengths that exercise the scalar tails.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "ds/kernels/cpu/kernels.h"

namespace {

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
bool is_nan_f32(uint32_t u) { return (u & 0x7FFFFFFFu) > 0x7F800000u; }

uint16_t ref_f32_to_bf16(float f) {
  const uint32_t x = bits(f);
  uint32_t upper = x >> 16;
  const uint32_t lower = x & 0xFFFFu;
  if (lower > 0x8000u || (lower == 0x8000u && (upper & 1u))) ++upper;
  return uint16_t(upper);
}

uint16_t ref_f32_to_f16(float f) {
  const uint32_t x = bits(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax == 0x7F800000u) return sign | 0x7C00u;
  const int e = int(ax >> 23) - 127;
  if (e > 15) return sign | 0x7C00u;
  const uint32_t m = (ax >> 23) == 0 ? (ax & 0x7FFFFFu) : ((ax & 0x7FFFFFu) | 0x800000u);
  const int shift = e >= -14 ? 13 : 13 + (-14 - e);
  if (shift >= 26) return sign;  // below half the smallest subnormal
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  uint32_t r = e >= -14 ? (uint32_t(e + 14) << 10) + q : q;
  if (r >= 0x7C00u) r = 0x7C00u;
  return sign | uint16_t(r);
}

float ref_f16_to_f32(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1F, frac = h & 0x3FF;
  double v;
  if (exp == 0) {
    v = std::ldexp(double(frac), -24);
  } else if (exp == 31) {
    v = frac ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else {
    v = std::ldexp(double(1024 + frac), exp - 25);
  }
  return float(sign ? -v : v);
}

std::vector<float> special_values() {
  std::vector<float> v = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, -65504.0f, 65519.0f, 65520.0f, 65536.0f, 1e10f,
                          -1e10f, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::min(), std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
                          from_bits(0x7F800001u), from_bits(0xFF800001u), from_bits(0x7FC00000u),
                          from_bits(0x7FFFFFFFu),
                          // ties: bf16 (half-way at bit 15) and fp16 (half-way at bit 12)
                          1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f,
                          -(1.0f + 0x1p-8f), -(1.0f + 3 * 0x1p-11f),
                          // fp16 subnormal range and its rounding boundaries
                          0x1p-24f, 0x1p-25f, 0x1.8p-25f, 0x1p-26f, 0x1.8p-24f, 0x1.4p-24f, 0x1p-14f, 0x1.ff8p-15f,
                          6.1e-5f, 3e-7f, -3e-7f, 0x1.0p-20f, 0x1.003p-20f,
                          // largest values that still round to the largest finite
                          0x1.ffcp15f, 0x1.ffdfffp15f, 0x1.ffep15f, 0x1.fefffep127f, 0x1.ff0000p127f};
  return v;
}

void check_f32_to_16(const std::vector<float>& in) {
  std::vector<uint16_t> bf(in.size()), hf(in.size());
  ds::cpu::f32_to_bf16(bf.data(), in.data(), in.size());
  ds::cpu::f32_to_f16(hf.data(), in.data(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    const uint32_t x = bits(in[i]);
    if (is_nan_f32(x)) {
      ASSERT_EQ(bf[i] & 0x7F80u, 0x7F80u) << i;
      ASSERT_NE(bf[i] & 0x7Fu, 0u) << "bf16 NaN became inf at " << i;
      ASSERT_EQ(bf[i] >> 15, x >> 31);
      ASSERT_EQ(hf[i] & 0x7C00u, 0x7C00u) << i;
      ASSERT_NE(hf[i] & 0x3FFu, 0u) << "f16 NaN became inf at " << i;
      ASSERT_EQ(hf[i] >> 15, x >> 31);
    } else {
      ASSERT_EQ(bf[i], ref_f32_to_bf16(in[i])) << std::hexfloat << in[i] << " at " << i;
      ASSERT_EQ(hf[i], ref_f32_to_f16(in[i])) << std::hexfloat << in[i] << " at " << i;
    }
  }
}

TEST(Convert, ReferenceSanity) {
  EXPECT_EQ(ref_f32_to_f16(1.0f), 0x3C00);
  EXPECT_EQ(ref_f32_to_f16(65504.0f), 0x7BFF);
  EXPECT_EQ(ref_f32_to_f16(65520.0f), 0x7C00);
  EXPECT_EQ(ref_f32_to_f16(0x1p-24f), 0x0001);
  EXPECT_EQ(ref_f32_to_f16(0x1p-25f), 0x0000);
  EXPECT_EQ(ref_f32_to_f16(0x1.8p-24f), 0x0002);
  EXPECT_EQ(ref_f32_to_f16(1.0f + 0x1p-11f), 0x3C00);
  EXPECT_EQ(ref_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3C02);
  EXPECT_EQ(ref_f32_to_bf16(1.0f + 0x1p-8f), 0x3F80);
  EXPECT_EQ(ref_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3F82);
  EXPECT_EQ(ref_f16_to_f32(0x0001), 0x1p-24f);
  EXPECT_EQ(ref_f16_to_f32(0xFBFF), -65504.0f);
}

TEST(Convert, SpecialValuesAtEveryTailPosition) {
  const auto sv = special_values();
  // Shift the list so every value lands in the AVX body and in the scalar tail.
  for (size_t offset = 0; offset < 9; ++offset) {
    std::vector<float> in(offset, 0.5f);
    in.insert(in.end(), sv.begin(), sv.end());
    for (size_t len : {in.size(), in.size() - 1, size_t{1}, size_t{9}}) {
      check_f32_to_16(std::vector<float>(in.begin(), in.begin() + std::min(len, in.size())));
    }
  }
}

TEST(Convert, RandomBitPatterns) {
  std::mt19937 gen(1234);
  std::vector<float> in((1 << 20) + 5);
  for (auto& f : in) f = from_bits(gen());
  check_f32_to_16(in);
  // Values in fp16 range, including subnormals.
  std::uniform_real_distribution<float> mant(-1.0f, 1.0f);
  std::uniform_int_distribution<int> ex(-30, 17);
  for (auto& f : in) f = std::ldexp(mant(gen), ex(gen));
  check_f32_to_16(in);
}

TEST(Convert, All16BitInputsToF32AndBack) {
  std::vector<uint16_t> all(65536 + 3);
  for (size_t i = 0; i < all.size(); ++i) all[i] = uint16_t(i);
  std::vector<float> f(all.size()), g(all.size());
  ds::cpu::f16_to_f32(f.data(), all.data(), all.size());
  ds::cpu::bf16_to_f32(g.data(), all.data(), all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    const float r = ref_f16_to_f32(all[i]);
    if (std::isnan(r)) {
      ASSERT_TRUE(std::isnan(f[i])) << i;
    } else {
      ASSERT_EQ(bits(f[i]), bits(r)) << i;
    }
    ASSERT_EQ(bits(g[i]), uint32_t(all[i]) << 16) << i;
  }
  // Round trip: every non-NaN 16-bit value survives f32 and back exactly.
  std::vector<uint16_t> h(all.size()), b(all.size());
  ds::cpu::f32_to_f16(h.data(), f.data(), f.size());
  ds::cpu::f32_to_bf16(b.data(), g.data(), g.size());
  for (size_t i = 0; i < all.size(); ++i) {
    if (!std::isnan(f[i])) {
      ASSERT_EQ(h[i], all[i]) << i;
    }
    if (!std::isnan(g[i])) {
      ASSERT_EQ(b[i], all[i]) << i;
    }
  }
}

}  // namespace
