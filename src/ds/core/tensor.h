// Tensor: a typed, shaped, contiguous view into a Storage. Views (view, slice, narrow) share the storage.
// Only contiguous row-major layouts exist: every kernel here works on flat buffers (llm.c style), and ZeRO
// partitions flat buffers, so strides would add cost without a user.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "ds/core/device.h"
#include "ds/core/dtype.h"
#include "ds/core/error.h"
#include "ds/core/memory.h"
#include "ds/core/shape.h"

namespace ds {

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Category cat = Category::workspace,
                      Tier tier = Tier::device, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Category cat = Category::workspace,
                      Tier tier = Tier::device, Device device = Device::cpu());
  // A view of `shape` starting `offset_bytes` into `storage`.
  static Tensor from_storage(std::shared_ptr<Storage> storage, int64_t offset_bytes, const Shape& shape,
                             DType dtype);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim(); }
  int64_t size(int d) const { return shape_[d]; }
  int64_t numel() const { return shape_.numel(); }
  int64_t nbytes() const { return numel() * static_cast<int64_t>(dtype_size(dtype_)); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::cpu(); }
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  // A non-owning view of memory the caller keeps alive (token ids from a data loader, a gathered ZeRO buffer
  // handed out as a pointer): never freed and never counted by a MemoryTracker.
  static Tensor borrow(void* data, const Shape& shape, DType dtype, Device device = Device::cpu());

  // Host access: the address of the first element. A tensor in device (GPU) memory is an error here (DeviceError):
  // its memory is not addressable from the CPU; use an ops:: function, which runs on the tensor's device.
  void* raw() const {
    DS_ASSERT(defined(), "raw() on an undefined tensor");
    if (!storage_->device().is_cpu()) throw_host_access();
    return address();
  }
  template <typename T>
  T* data() const {
    DS_ASSERT(defined(), "data() on an undefined tensor");
    DS_ASSERT(DTypeOf<T>::value == dtype_, "typed access as {} to a {} tensor", dtype_name(DTypeOf<T>::value),
              dtype_name(dtype_));
    return static_cast<T*>(raw());
  }
  // The address wherever the memory lives, for a backend that hands it to its own device API (a CUDA kernel,
  // NCCL). Never dereference it on the host.
  void* device_ptr() const {
    DS_ASSERT(defined(), "device_ptr() on an undefined tensor");
    return address();
  }

  // Same elements, another shape (numel must match).
  Tensor view(const Shape& shape) const;
  // Rows [start, start+len) along dimension 0.
  Tensor narrow(int64_t start, int64_t len) const;
  // `shape` worth of elements starting at flat element `offset`.
  Tensor slice_flat(int64_t offset, const Shape& shape) const;

  void zero_();
  void fill_(float value);                 // f32 only
  void copy_from(const Tensor& src);       // same numel; converts between f32/bf16/f16
  std::string str() const;                 // "f32[2, 3] on cpu"

 private:
  void* address() const { return static_cast<char*>(storage_->data()) + offset_; }
  [[noreturn]] void throw_host_access() const;
  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;  // bytes
  Shape shape_;
  DType dtype_ = DType::f32;
};

}  // namespace ds
