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

OneBitAllReduce::OneBitAllReduce(Communicator& comm, const std::vector<int64_t>& sizes) : comm_(comm) {
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
    numel_ += n;
    padded_ += s.padded;
    chunks_ += s.chunk;
    segments_.push_back(s);
  }
  if (W == 1) return;  // nothing to exchange, nothing to keep
  worker_error_ = Tensor::zeros({padded_}, DType::f32, Category::optimizer);
  server_error_ = Tensor::zeros({chunks_}, DType::f32, Category::optimizer);
  work_ = Tensor::zeros({padded_}, DType::f32, Category::comm_buffer);
  server_sum_ = Tensor::zeros({chunks_}, DType::f32, Category::comm_buffer);
  for (Tensor* bits : {&worker_bits_, &send_bits_, &recv_bits_, &gathered_bits_})
    *bits = Tensor::zeros({padded_ / 8}, DType::u8, Category::comm_buffer);
  server_bits_ = Tensor::zeros({chunks_ / 8}, DType::u8, Category::comm_buffer);
  const size_t T = segments_.size();
  scales_.assign(T, 0.0f);
  server_scales_.assign(T, 0.0f);
  all_scales_.assign(T * static_cast<size_t>(W), 0.0f);
  all_server_scales_.assign(T * static_cast<size_t>(W), 0.0f);
}

void OneBitAllReduce::reset_errors() {
  if (worker_error_.defined()) worker_error_.zero_();
  if (server_error_.defined()) server_error_.zero_();
}

void OneBitAllReduce::run(float* buffer) {
  const int W = comm_.size();
  if (W == 1 || padded_ == 0) return;
  const size_t T = segments_.size();
  float* work = work_.data<float>();
  float* werr = worker_error_.data<float>();
  uint8_t* wbits = worker_bits_.data<uint8_t>();
  uint8_t* send = send_bits_.data<uint8_t>();
  const int64_t block = chunks_ / 8;  // bytes each rank receives from each rank
  // 1. worker: compress each padded tensor; chunk r of its signs goes to block r.
  for (size_t t = 0; t < T; ++t) {
    const Segment& s = segments_[t];
    float* x = work + s.padded_offset;
    std::memcpy(x, buffer + s.offset, static_cast<size_t>(s.numel) * sizeof(float));
    std::memset(x + s.numel, 0, static_cast<size_t>(s.padded - s.numel) * sizeof(float));
    scales_[t] = cpu::onebit_compress(x, werr + s.padded_offset, static_cast<size_t>(s.padded),
                                      wbits + s.padded_offset / 8);
    for (int r = 0; r < W; ++r)
      std::memcpy(send + r * block + s.chunk_offset / 8, wbits + (s.padded_offset + r * s.chunk) / 8,
                  static_cast<size_t>(s.chunk / 8));
  }
  // 2. exchange: signs to their servers, every worker's scales to everyone.
  uint8_t* recv = recv_bits_.data<uint8_t>();
  WorkPtr signs = comm_.all_to_all_async(send, recv, static_cast<size_t>(block), DType::u8);
  WorkPtr scales = comm_.all_gather_async(scales_.data(), all_scales_.data(), T, DType::f32);
  signs->wait();
  scales->wait();
  // 3. server: the average of the W decompressed chunks, compensated and compressed again.
  float* sum = server_sum_.data<float>();
  float* serr = server_error_.data<float>();
  uint8_t* sbits = server_bits_.data<uint8_t>();
  for (size_t t = 0; t < T; ++t) {
    const Segment& s = segments_[t];
    float* acc = sum + s.chunk_offset;
    for (int w = 0; w < W; ++w)
      cpu::onebit_decompress(recv + w * block + s.chunk_offset / 8, static_cast<size_t>(s.chunk),
                             all_scales_[static_cast<size_t>(w) * T + t] / static_cast<float>(W), acc, w > 0);
    server_scales_[t] = cpu::onebit_compress(acc, serr + s.chunk_offset, static_cast<size_t>(s.chunk),
                                             sbits + s.chunk_offset / 8);
  }
  // 4. every server's chunk to everyone, then decompressed into the caller's buffer.
  uint8_t* gathered = gathered_bits_.data<uint8_t>();
  signs = comm_.all_gather_async(sbits, gathered, static_cast<size_t>(block), DType::u8);
  scales = comm_.all_gather_async(server_scales_.data(), all_server_scales_.data(), T, DType::f32);
  signs->wait();
  scales->wait();
  for (size_t t = 0; t < T; ++t) {
    const Segment& s = segments_[t];
    float* x = work + s.padded_offset;
    for (int w = 0; w < W; ++w)
      cpu::onebit_decompress(gathered + w * block + s.chunk_offset / 8, static_cast<size_t>(s.chunk),
                             all_server_scales_[static_cast<size_t>(w) * T + t], x + w * s.chunk, false);
    std::memcpy(buffer + s.offset, x, static_cast<size_t>(s.numel) * sizeof(float));
  }
}

}  // namespace ds::comm
