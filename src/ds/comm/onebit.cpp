// The 1-bit all-reduce (Note [1-bit all-reduce] in onebit.h).
#include "ds/comm/onebit.h"

#include <cstring>
#include <numeric>

#include "ds/core/error.h"
#include "ds/kernels/cpu/kernels.h"

namespace ds::comm {

int64_t OneBitAllReduce::padding_multiple(int world) {
  return int64_t(world) * std::lcm(int64_t(world), int64_t(8));
}

OneBitAllReduce::OneBitAllReduce(Communicator& comm, const std::vector<int64_t>& sizes, int64_t scale_block)
    : comm_(comm), scale_block_(scale_block) {
  DS_CHECK_AS(CommError, scale_block >= 0 && scale_block % 8 == 0,
              "[comm] 1-bit all-reduce: scale blocks must be a multiple of 8 elements (or 0), found {}", scale_block);
  const int W = comm.size();
  const int64_t multiple = padding_multiple(W);
  for (const int64_t n : sizes) {
    DS_CHECK_AS(CommError, n >= 0, "[comm] 1-bit all-reduce: a tensor of {} elements", n);
    Segment s;
    s.offset = numel_;
    s.numel = n;
    s.padded = (n + multiple - 1) / multiple * multiple;
    s.chunk = s.padded / W;
    s.padded_offset = padded_;
    s.chunk_offset = chunks_;
    s.block = scale_block == 0 ? std::max<int64_t>(s.chunk, 8) : scale_block;
    s.scales = s.chunk == 0 ? 0 : (s.chunk + s.block - 1) / s.block;
    s.scale_offset = scale_count_;
    numel_ += n;
    padded_ += s.padded;
    chunks_ += s.chunk;
    scale_count_ += s.scales;
    segments_.push_back(s);
  }
  message_ = 4 * scale_count_ + (chunks_ / 8 + 3) / 4 * 4;  // whole floats: every message's scales stay aligned
  if (W == 1) return;  // nothing to exchange, nothing to keep
  worker_error_ = Tensor::zeros({padded_}, DType::f32, Category::optimizer);
  server_error_ = Tensor::zeros({chunks_}, DType::f32, Category::optimizer);
  work_ = Tensor::zeros({padded_}, DType::f32, Category::comm_buffer);
  server_sum_ = Tensor::zeros({chunks_}, DType::f32, Category::comm_buffer);
  if (scale_block == 0) worker_bits_ = Tensor::zeros({padded_ / 8}, DType::u8, Category::comm_buffer);
  for (Tensor* t : {&send_, &recv_, &gathered_}) *t = Tensor::zeros({message_ * W}, DType::u8, Category::comm_buffer);
  server_message_ = Tensor::zeros({message_}, DType::u8, Category::comm_buffer);
}

void OneBitAllReduce::reset_errors() {
  if (worker_error_.defined()) worker_error_.zero_();
  if (server_error_.defined()) server_error_.zero_();
}

void OneBitAllReduce::run(float* buffer) {
  const int W = comm_.size();
  if (W == 1 || padded_ == 0) return;
  float* work = work_.data<float>();
  float* werr = worker_error_.data<float>();
  uint8_t* send = send_.data<uint8_t>();
  auto message = [&](Tensor& t, int r) { return t.data<uint8_t>() + static_cast<size_t>(message_) * r; };
  // 1. worker: compress each padded tensor; chunk r's scales and signs go into the message for rank r.
  for (const Segment& s : segments_) {
    float* x = work + s.padded_offset;
    std::memcpy(x, buffer + s.offset, static_cast<size_t>(s.numel) * sizeof(float));
    std::memset(x + s.numel, 0, static_cast<size_t>(s.padded - s.numel) * sizeof(float));
    if (s.padded == 0) continue;
    if (scale_block_ == 0) {  // DeepSpeed's: one scale over the whole tensor, in every chunk's message
      uint8_t* bits = worker_bits_.data<uint8_t>() + s.padded_offset / 8;
      float scale = 0;
      cpu::onebit_compress(x, werr + s.padded_offset, static_cast<size_t>(s.padded), static_cast<size_t>(s.padded),
                           bits, &scale);
      for (int r = 0; r < W; ++r) {
        scales_of(message(send_, r))[s.scale_offset] = scale;
        std::memcpy(bits_of(message(send_, r)) + s.chunk_offset / 8, bits + r * s.chunk / 8,
                    static_cast<size_t>(s.chunk / 8));
      }
      continue;
    }
    for (int r = 0; r < W; ++r)
      cpu::onebit_compress(x + r * s.chunk, werr + s.padded_offset + r * s.chunk, static_cast<size_t>(s.chunk),
                           static_cast<size_t>(s.block), bits_of(message(send_, r)) + s.chunk_offset / 8,
                           scales_of(message(send_, r)) + s.scale_offset);
  }
  // 2. every rank's messages to their servers.
  comm_.all_to_all(send, recv_.data<uint8_t>(), static_cast<size_t>(message_), DType::u8);
  // 3. server: the average of the W decompressed chunks, compensated and compressed again.
  float* sum = server_sum_.data<float>();
  float* serr = server_error_.data<float>();
  uint8_t* mine = server_message_.data<uint8_t>();
  for (const Segment& s : segments_) {
    if (s.chunk == 0) continue;
    float* acc = sum + s.chunk_offset;
    const auto worker_block = static_cast<size_t>(scale_block_ == 0 ? s.chunk : s.block);
    for (int w = 0; w < W; ++w)
      cpu::onebit_decompress(bits_of(message(recv_, w)) + s.chunk_offset / 8, static_cast<size_t>(s.chunk),
                             worker_block, scales_of(message(recv_, w)) + s.scale_offset, 1.0f / static_cast<float>(W),
                             acc, w > 0);
    cpu::onebit_compress(acc, serr + s.chunk_offset, static_cast<size_t>(s.chunk), static_cast<size_t>(s.block),
                         bits_of(mine) + s.chunk_offset / 8, scales_of(mine) + s.scale_offset);
  }
  // 4. every server's message to everyone, decompressed into the caller's buffer.
  comm_.all_gather(mine, gathered_.data<uint8_t>(), static_cast<size_t>(message_), DType::u8);
  for (const Segment& s : segments_) {
    float* x = work + s.padded_offset;
    for (int w = 0; w < W && s.chunk > 0; ++w)
      cpu::onebit_decompress(bits_of(message(gathered_, w)) + s.chunk_offset / 8, static_cast<size_t>(s.chunk),
                             static_cast<size_t>(s.block), scales_of(message(gathered_, w)) + s.scale_offset, 1.0f,
                             x + w * s.chunk, false);
    std::memcpy(buffer + s.offset, x, static_cast<size_t>(s.numel) * sizeof(float));
  }
}

}  // namespace ds::comm
