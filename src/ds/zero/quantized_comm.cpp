// ZeRO++'s quantized collectives (Note [Quantized collectives] in the header).
#include "ds/zero/quantized_comm.h"

#include <functional>
#include <utility>
#include <vector>

#include "ds/core/convert.h"
#include "ds/core/error.h"
#include "ds/core/tensor.h"
#include "ds/kernels/cpu/kernels.h"

namespace ds::zero {
namespace {

// A collective followed by the work that finishes it on the waiting thread, once.
class FinishingWork final : public comm::Work {
 public:
  FinishingWork(comm::WorkPtr inner, std::function<void()> finish)
      : inner_(std::move(inner)), finish_(std::move(finish)) {}
  void wait() override {
    inner_->wait();
    if (finish_) std::exchange(finish_, nullptr)();
  }
  bool test() override { return inner_->test(); }

 private:
  comm::WorkPtr inner_;
  std::function<void()> finish_;
};

void check_format(const QuantizedFormat& f) {
  DS_ASSERT((f.bits == 8 || f.bits == 4) && f.block > 0 && f.block % 2 == 0, "quantized format {} bits, block {}",
            f.bits, f.block);
}

// Quantizes n elements of dtype at src into message `msg`, widening through `wide` (n floats) when 16-bit.
void quantize(const void* src, DType dtype, size_t n, const QuantizedFormat& f, float* wide, uint8_t* msg) {
  const float* x = static_cast<const float*>(src);
  if (dtype != DType::f32) {
    to_f32(wide, src, dtype, n);
    x = wide;
  }
  const size_t scales = static_cast<size_t>(4 * f.blocks(static_cast<int64_t>(n)));
  cpu::quantize_blocks(x, n, f.bits, static_cast<size_t>(f.block), msg + scales, reinterpret_cast<float*>(msg));
}

void dequantize(const uint8_t* msg, size_t n, const QuantizedFormat& f, float* out, bool accumulate) {
  const size_t scales = static_cast<size_t>(4 * f.blocks(static_cast<int64_t>(n)));
  cpu::dequantize_blocks(msg + scales, reinterpret_cast<const float*>(msg), n, f.bits, static_cast<size_t>(f.block),
                         out, accumulate);
}

}  // namespace

comm::WorkPtr quantized_all_gather_async(comm::Communicator& comm, const void* send, void* recv, size_t count,
                                         DType dtype, const QuantizedFormat& format) {
  check_format(format);
  const int W = comm.size();
  const auto bytes = static_cast<size_t>(format.message_bytes(static_cast<int64_t>(count)));
  auto messages = std::make_shared<Tensor>(
      Tensor::empty({static_cast<int64_t>(bytes) * (W + 1)}, DType::u8, Category::comm_buffer));
  auto wide = std::make_shared<Tensor>(Tensor::empty({static_cast<int64_t>(count)}, DType::f32, Category::comm_buffer));
  uint8_t* own = messages->data<uint8_t>() + bytes * static_cast<size_t>(W);
  quantize(send, dtype, count, format, wide->data<float>(), own);
  comm::WorkPtr inner = comm.all_gather_async(own, messages->data<uint8_t>(), bytes, DType::u8);
  return std::make_shared<FinishingWork>(inner, [=, messages = messages] {
    for (int r = 0; r < W; ++r) {
      std::byte* dst = static_cast<std::byte*>(recv) + static_cast<size_t>(r) * count * dtype_size(dtype);
      float* out = dtype == DType::f32 ? reinterpret_cast<float*>(dst) : wide->data<float>();
      dequantize(messages->data<uint8_t>() + bytes * static_cast<size_t>(r), count, format, out, false);
      if (dtype != DType::f32) from_f32(dst, out, dtype, count);
    }
  });
}

comm::WorkPtr quantized_reduce_scatter_async(comm::Communicator& comm, void* data, size_t count, DType dtype,
                                             const QuantizedFormat& format) {
  check_format(format);
  const int W = comm.size(), me = comm.rank();
  const auto bytes = static_cast<size_t>(format.message_bytes(static_cast<int64_t>(count)));
  auto messages = std::make_shared<Tensor>(  // zeroed: the block a rank sends itself is never filled
      Tensor::zeros({static_cast<int64_t>(bytes) * 2 * W}, DType::u8, Category::comm_buffer));
  auto wide = std::make_shared<Tensor>(Tensor::empty({static_cast<int64_t>(count)}, DType::f32, Category::comm_buffer));
  uint8_t* send = messages->data<uint8_t>();
  uint8_t* recv = send + bytes * static_cast<size_t>(W);
  const size_t block_bytes = count * dtype_size(dtype);
  for (int r = 0; r < W; ++r) {
    if (r == me) continue;  // this rank's own block stays exact
    quantize(static_cast<const std::byte*>(data) + block_bytes * static_cast<size_t>(r), dtype, count, format,
             wide->data<float>(), send + bytes * static_cast<size_t>(r));
  }
  comm::WorkPtr inner = comm.all_to_all_async(send, recv, bytes, DType::u8);
  // `messages` is named in the capture list: the body only reaches it through `recv`, and the exchange needs it.
  return std::make_shared<FinishingWork>(inner, [=, messages = messages] {
    std::byte* mine = static_cast<std::byte*>(data) + block_bytes * static_cast<size_t>(me);
    float* acc = wide->data<float>();
    to_f32(acc, mine, dtype, count);  // the sum in fp32, rounded once below
    for (int r = 0; r < W; ++r)
      if (r != me) dequantize(recv + bytes * static_cast<size_t>(r), count, format, acc, true);
    from_f32(mine, acc, dtype, count);
  });
}

}  // namespace ds::zero
