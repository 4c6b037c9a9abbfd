// Layer partitioning across pipeline stages (partition.h).
#include "ds/pipe/partition.h"

#include <algorithm>
#include <limits>
#include <regex>

#include "ds/core/error.h"

namespace ds::pipe {

namespace {

// DeepSpeed's partition_uniform: floor(n / p) layers each, the first n mod p stages one more.
std::vector<int> uniform(int n, int p) {
  std::vector<int> bounds{0};
  const int chunk = n / p, residual = n % p;
  for (int s = 0; s < p; ++s) bounds.push_back(bounds.back() + chunk + (s < residual ? 1 : 0));
  return bounds;
}

// Contiguous parts minimising the heaviest part (the linear partition problem, by dynamic programming over
// prefix sums); every part holds at least one layer. Among the best, a part ends as late as it can, so layers of
// no weight join the part before them.
std::vector<int> balanced(const std::vector<int64_t>& w, int p) {
  const int n = static_cast<int>(w.size());
  std::vector<int64_t> prefix(n + 1, 0);
  for (int i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + w[i];
  constexpr int64_t kInf = std::numeric_limits<int64_t>::max();
  // best[k][i]: the smallest heaviest part when the first i layers form k parts; cut[k][i]: where part k starts.
  std::vector<std::vector<int64_t>> best(p + 1, std::vector<int64_t>(n + 1, kInf));
  std::vector<std::vector<int>> cut(p + 1, std::vector<int>(n + 1, 0));
  best[0][0] = 0;
  for (int k = 1; k <= p; ++k)
    for (int i = k; i <= n; ++i)
      for (int j = k - 1; j < i; ++j) {
        if (best[k - 1][j] == kInf) continue;
        const int64_t heaviest = std::max(best[k - 1][j], prefix[i] - prefix[j]);
        if (heaviest <= best[k][i]) best[k][i] = heaviest, cut[k][i] = j;  // <=: the latest start wins
      }
  std::vector<int> bounds(p + 1);
  bounds[p] = n;
  for (int k = p; k >= 1; --k) bounds[k - 1] = cut[k][bounds[k]];
  return bounds;
}

}  // namespace

std::vector<int> partition_layers(const std::vector<Layer>& layers, const std::string& method, int stages) {
  const int n = static_cast<int>(layers.size());
  DS_CHECK_AS(ConfigError, stages >= 1 && n >= stages, "[pipeline] cannot split {} layers into {} stages: every "
              "stage needs at least one layer; use fewer stages or a deeper model", n, stages);
  if (method == "uniform") return uniform(n, stages);
  std::vector<int64_t> weights;
  if (method == "parameters" || method == "best") {
    for (const Layer& l : layers) weights.push_back(l.params);
  } else if (method.rfind("type:", 0) == 0) {
    const std::string pattern = method.substr(5);
    std::regex re;
    try {
      re = std::regex(pattern, std::regex::icase);
    } catch (const std::regex_error& e) {
      DS_THROW(ConfigError, "[pipeline] partition method '{}': '{}' is not a valid regular expression ({})", method,
               pattern, e.what());
    }
    int64_t matched = 0;
    for (const Layer& l : layers) {
      weights.push_back(std::regex_search(l.type, re) ? 1 : 0);
      matched += weights.back();
    }
    DS_CHECK_AS(ConfigError, matched > 0, "[pipeline] Partitioning '{}' found no valid layers to partition (the "
                "layer types are {}); match one of them, e.g. 'type:transformer'", method, [&] {
                  std::string names;
                  for (const Layer& l : layers)
                    if (names.find(l.type) == std::string::npos) names += (names.empty() ? "" : ", ") + l.type;
                  return names;
                }());
  } else {
    DS_THROW(ConfigError, "[pipeline] unknown partition method '{}'; choose 'parameters', 'uniform' or "
             "'type:REGEX' (e.g. 'type:transformer')", method);
  }
  return balanced(weights, stages);
}

}  // namespace ds::pipe
