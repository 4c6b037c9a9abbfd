// Row exchange (see the header).
#include "ds/zero/row_exchange.h"

#include <algorithm>

#include "ds/core/error.h"

namespace ds::zero {

const int32_t* RowExchange::gather_ids(const int32_t* ids, int64_t n) {
  const int world = comm_.size();
  int32_t count = static_cast<int32_t>(n);
  counts_.resize(static_cast<size_t>(world));
  comm_.all_gather(&count, counts_.data(), 1, DType::i32);
  for (int r = 0; r < world; ++r) {
    DS_CHECK_AS(ShapeError, counts_[r] == count,
                "[zero] rank {} passed {} rows to a row collective but rank {} passed {}; every rank must run the "
                "same micro-batch shape", r, counts_[r], comm_.rank(), count);
  }
  if (ids_.numel() < world * n) ids_ = Tensor::empty({world * n}, DType::i32, Category::comm_buffer);
  comm_.all_gather(ids, ids_.data<int32_t>(), static_cast<size_t>(n), DType::i32);
  return ids_.data<int32_t>();
}

float* RowExchange::rows(int64_t n) {
  if (rows_.numel() < n) rows_ = Tensor::empty({n}, DType::f32, Category::comm_buffer);
  return rows_.data<float>();
}

void RowExchange::sort_ids(const int32_t* ids, int64_t n) {
  order_.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order_[static_cast<size_t>(i)] = i;
  std::stable_sort(order_.begin(), order_.end(), [&](int64_t a, int64_t b) { return ids[a] < ids[b]; });
}

}  // namespace ds::zero
