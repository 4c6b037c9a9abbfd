// Element types. The CPU backend computes in f32; bf16 and f16 are storage types converted on load/store. u8 is
// raw bytes (packed signs, quantized integers): moved by collectives, never reduced or computed with.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace ds {

enum class DType : uint8_t { f32, bf16, f16, i32, u8 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::bf16: return 2;
    case DType::f16: return 2;
    case DType::i32: return 4;
    case DType::u8: return 1;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::i32: return "i32";
    case DType::u8: return "u8";
  }
  return "?";
}

// Maps C++ element types to DType for typed access checks.
template <typename T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::f32; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::i32; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::u8; };

}  // namespace ds
