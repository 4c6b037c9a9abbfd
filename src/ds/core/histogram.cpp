// Bucket lookup by binary search over the upper bounds; a value equal to a bound falls in that bound's bucket,
// as Prometheus' "le" says.
#include "ds/core/histogram.h"

#include <algorithm>
#include <utility>

#include "ds/core/error.h"

namespace ds {

Histogram::Histogram(std::vector<double> upper_bounds) : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1) {
  DS_ASSERT(std::is_sorted(bounds_.begin(), bounds_.end()), "histogram bounds must be sorted");
}

Histogram Histogram::latency_seconds() {
  return Histogram({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60});
}

void Histogram::observe(double value) {
  const auto it = std::lower_bound(bounds_.begin(), bounds_.end(), value);
  ++counts_[static_cast<size_t>(it - bounds_.begin())];
  ++count_;
  sum_ += value;
}

}  // namespace ds
