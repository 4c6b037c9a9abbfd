// An MoE model's expert-parallel group (nn/moe.h) over a communicator, which counts its traffic.
#pragma once

#include "ds/comm/communicator.h"
#include "ds/nn/moe.h"

namespace ds::engine {

class CommExpertParallel final : public nn::ExpertParallelGroup {
 public:
  explicit CommExpertParallel(comm::Communicator& comm) : comm_(comm) {}
  int rank() const override { return comm_.rank(); }
  int size() const override { return comm_.size(); }
  void all_to_all_v(const float* send, const std::vector<size_t>& send_counts, float* recv,
                    const std::vector<size_t>& recv_counts) override {
    comm_.all_to_all_v(send, send_counts, recv, recv_counts, DType::f32);
  }
  void all_to_all_counts(const int32_t* send, int32_t* recv, size_t n) override {
    comm_.all_to_all(send, recv, n, DType::i32);
  }

 private:
  comm::Communicator& comm_;
};

}  // namespace ds::engine
