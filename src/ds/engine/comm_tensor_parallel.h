// A model's tensor-parallel group (nn/tensor_parallel.h) over a communicator, which counts its traffic: what the
// engine gives the training model, and what a tensor-parallel inference model is given.
#pragma once

#include "ds/comm/communicator.h"
#include "ds/nn/tensor_parallel.h"

namespace ds::engine {

class CommTensorParallel final : public nn::TensorParallelGroup {
 public:
  explicit CommTensorParallel(comm::Communicator& comm) : comm_(comm) {}
  int rank() const override { return comm_.rank(); }
  int size() const override { return comm_.size(); }
  void all_reduce_sum(float* data, int64_t n) override {
    comm_.all_reduce(data, static_cast<size_t>(n), DType::f32, comm::ReduceOp::sum);
  }
  void all_reduce_max(float* data, int64_t n) override {
    comm_.all_reduce(data, static_cast<size_t>(n), DType::f32, comm::ReduceOp::max);
  }
  using nn::TensorParallelGroup::all_reduce_sum;

 private:
  comm::Communicator& comm_;
};

}  // namespace ds::engine
