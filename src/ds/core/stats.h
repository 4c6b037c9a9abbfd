// Measurement helpers shared by the trainer, the training benchmark and the bench/ programs: the median of
// repeated timings, wall time since a point, and the process's peak resident memory. The median of an empty set
// is NaN, not 0, so a missing measurement cannot pass for a perfect one.
#pragma once

#include <chrono>
#include <vector>

namespace ds {

// Median of the values: the middle one, or the mean of the middle two for an even count; NaN when empty.
double median(std::vector<double> values);

// The q-quantile (0..1) by linear interpolation between the closest ranks (numpy's default); NaN when empty.
double percentile(std::vector<double> values, double q);

// Seconds on the steady clock since t0.
double seconds_since(std::chrono::steady_clock::time_point t0);

// Peak resident set size of this process so far, in MiB (getrusage's ru_maxrss).
double peak_rss_mib();

}  // namespace ds
