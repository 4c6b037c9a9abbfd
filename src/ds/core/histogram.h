// A Prometheus-style histogram: fixed upper bounds, a count per bucket (plus one above the last bound), the sum
// and the count of observations. A value type: copy it to take a snapshot.
#pragma once

#include <cstdint>
#include <vector>

namespace ds {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  // Bounds for latencies in seconds, 1 ms to 60 s.
  static Histogram latency_seconds();
  void observe(double value);
  const std::vector<double>& upper_bounds() const { return bounds_; }
  // counts()[i]: observations <= upper_bounds()[i] and above the previous bound; the last entry counts the rest.
  const std::vector<int64_t>& counts() const { return counts_; }
  int64_t count() const { return count_; }
  double sum() const { return sum_; }

 private:
  std::vector<double> bounds_;
  std::vector<int64_t> counts_;
  int64_t count_ = 0;
  double sum_ = 0;
};

}  // namespace ds
