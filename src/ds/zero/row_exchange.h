// Row collectives for a row-sliced parameter (the token embedding, Note [Sliced head] in gpt2.cpp) that is not
// resident: the parameter coordinator looks rows up, the gradient reducer adds row gradients. Both need every
// rank's row ids and a staging buffer of rows; this part owns them once (comm_buffer memory, grown to the largest
// request and then reused, so steady-state steps allocate nothing).
#pragma once

#include <cstdint>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/core/tensor.h"

namespace ds::zero {

class RowExchange {
 public:
  explicit RowExchange(comm::Communicator& comm) : comm_(comm) {}
  // All ranks' ids, rank by rank (a collective; every rank must pass the same n, else ShapeError on all ranks).
  const int32_t* gather_ids(const int32_t* ids, int64_t n);
  // A staging buffer of at least n floats, valid until the next call.
  float* rows(int64_t n);
  // Calls f(id, sum) once per distinct id, ids ascending, with the fp32 sum of its rows [n, C] taken in row order,
  // so that a gradient stored in 16 bits is rounded once per row of the parameter, not once per occurrence.
  template <typename F>
  void for_each_row_sum(const int32_t* ids, const float* rows, int64_t n, int64_t C, F&& f);

 private:
  void sort_ids(const int32_t* ids, int64_t n);
  comm::Communicator& comm_;
  Tensor ids_, rows_;
  std::vector<int32_t> counts_;
  std::vector<int64_t> order_;
  std::vector<float> sum_;
};

template <typename F>
void RowExchange::for_each_row_sum(const int32_t* ids, const float* rows, int64_t n, int64_t C, F&& f) {
  sort_ids(ids, n);
  sum_.resize(static_cast<size_t>(C));
  for (size_t k = 0; k < order_.size();) {
    const int32_t id = ids[order_[k]];
    const float* first = rows + order_[k] * C;
    std::copy(first, first + C, sum_.begin());
    for (++k; k < order_.size() && ids[order_[k]] == id; ++k) {
      const float* row = rows + order_[k] * C;
      for (int64_t c = 0; c < C; ++c) sum_[static_cast<size_t>(c)] += row[c];
    }
    f(id, sum_.data());
  }
}

}  // namespace ds::zero
