// Tensor construction, views and dtype-converting copies (CPU). Conversions use core/convert.h's RNE routines.
#include "ds/core/tensor.h"

#include <cstring>

#include "ds/core/convert.h"

namespace ds {

Tensor Tensor::empty(const Shape& shape, DType dtype, Category cat, Tier tier, Device device) {
  auto storage = allocate_storage(shape.numel() * static_cast<int64_t>(dtype_size(dtype)), cat, tier, device);
  return from_storage(std::move(storage), 0, shape, dtype);
}

Tensor Tensor::borrow(void* data, const Shape& shape, DType dtype, Device device) {
  DS_ASSERT(data != nullptr || shape.numel() == 0, "borrowing a null pointer");
  const int64_t bytes = shape.numel() * static_cast<int64_t>(dtype_size(dtype));
  return from_storage(Storage::borrowed(data, bytes, device), 0, shape, dtype);
}

void Tensor::throw_host_access() const {
  DS_THROW(DeviceError, "[tensor] host access to {}: its memory is on the device and cannot be read or written by the "
           "CPU; copy it to the CPU first, or use an ops:: function, which runs where the tensor lives",
           str());
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Category cat, Tier tier, Device device) {
  Tensor t = empty(shape, dtype, cat, tier, device);
  t.zero_();
  return t;
}

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, int64_t offset_bytes, const Shape& shape,
                            DType dtype) {
  DS_ASSERT(storage != nullptr);
  DS_ASSERT(offset_bytes >= 0 && offset_bytes + shape.numel() * static_cast<int64_t>(dtype_size(dtype)) <=
                                     storage->bytes(),
            "view of {} bytes at offset {} exceeds a storage of {} bytes",
            shape.numel() * static_cast<int64_t>(dtype_size(dtype)), offset_bytes, storage->bytes());
  Tensor t;
  t.storage_ = std::move(storage);
  t.offset_ = offset_bytes;
  t.shape_ = shape;
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::view(const Shape& shape) const {
  DS_CHECK_AS(ShapeError, shape.numel() == numel(), "[tensor] cannot view {} as {}: element counts differ", str(),
              shape.str());
  return from_storage(storage_, offset_, shape, dtype_);
}

Tensor Tensor::narrow(int64_t start, int64_t len) const {
  DS_CHECK_AS(ShapeError, ndim() >= 1 && start >= 0 && len >= 0 && start + len <= size(0),
              "[tensor] rows [{}, {}) are out of range for {}", start, start + len, str());
  Shape s;
  s.push_back(len);
  for (int i = 1; i < ndim(); ++i) s.push_back(shape_[i]);
  const int64_t row = len == 0 ? 0 : s.numel() / len;
  return from_storage(storage_, offset_ + start * row * static_cast<int64_t>(dtype_size(dtype_)), s, dtype_);
}

Tensor Tensor::slice_flat(int64_t offset, const Shape& shape) const {
  DS_CHECK_AS(ShapeError, offset >= 0 && offset + shape.numel() <= numel(),
              "[tensor] flat slice [{}, {}) is out of range for {}", offset, offset + shape.numel(), str());
  return from_storage(storage_, offset_ + offset * static_cast<int64_t>(dtype_size(dtype_)), shape, dtype_);
}

void Tensor::zero_() {
  DS_CHECK_AS(DeviceError, device().is_cpu(), "[tensor] zero_ on {} is not supported yet", device().str());
  std::memset(raw(), 0, static_cast<size_t>(nbytes()));
}

void Tensor::fill_(float value) {
  float* p = data<float>();
  const int64_t n = numel();
  for (int64_t i = 0; i < n; ++i) p[i] = value;
}

void Tensor::copy_from(const Tensor& src) {
  DS_CHECK_AS(ShapeError, src.numel() == numel(), "[tensor] copy from {} into {}: element counts differ", src.str(),
              str());
  const size_t n = static_cast<size_t>(numel());
  if (!device().is_cpu() || !src.device().is_cpu()) {  // to, from or within a GPU: bytes as they are
    DS_CHECK_AS(DeviceError, src.dtype() == dtype_, "[tensor] a copy from {} into {} would convert on a GPU; copy "
                "in one dtype and convert on the CPU", src.str(), str());
    cuda::copy_bytes(device_ptr(), src.device_ptr(), static_cast<size_t>(nbytes()));
    return;
  }
  if (src.dtype() == dtype_) {
    std::memmove(raw(), src.raw(), static_cast<size_t>(nbytes()));
    return;
  }
  auto* dst16 = static_cast<uint16_t*>(raw());
  auto* src16 = static_cast<const uint16_t*>(src.raw());
  if (src.dtype() == DType::f32 && dtype_ == DType::bf16) return f32_to_bf16(dst16, src.data<float>(), n);
  if (src.dtype() == DType::f32 && dtype_ == DType::f16) return f32_to_f16(dst16, src.data<float>(), n);
  if (src.dtype() == DType::bf16 && dtype_ == DType::f32) return bf16_to_f32(data<float>(), src16, n);
  if (src.dtype() == DType::f16 && dtype_ == DType::f32) return f16_to_f32(data<float>(), src16, n);
  DS_THROW(ShapeError, "[tensor] no conversion from {} to {}", dtype_name(src.dtype()), dtype_name(dtype_));
}

std::string Tensor::str() const {
  return fmt::format("{}{} on {}", dtype_name(dtype_), shape_.str(), device().str());
}

}  // namespace ds
