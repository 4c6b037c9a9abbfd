// Tensor-parallel share arithmetic (tp_split.h).
#include "ds/core/tp_split.h"

#include <algorithm>

#include "ds/core/error.h"

namespace ds {

std::pair<int64_t, int64_t> TpSplit::piece(int64_t extent, int rank, int size) {
  const int64_t len = (extent + size - 1) / size;
  return {std::min(extent, rank * len), std::min(extent, (rank + 1) * len)};
}

Shape TpSplit::local_shape(const Shape& whole) const {
  if (!split()) return whole;
  DS_ASSERT(dim < whole.ndim() && whole[dim] % blocks == 0, "a split along dim {} in {} blocks "
            "of a {}-dimensional parameter", dim, blocks, whole.ndim());
  const auto [begin, end] = piece(whole[dim] / blocks, rank, size);
  Shape s;
  for (int d = 0; d < whole.ndim(); ++d) s.push_back(d == dim ? (end - begin) * blocks : whole[d]);
  return s;
}

namespace {
// f(whole_offset, local_offset, count) for each contiguous run of this rank's elements, in order.
template <typename F>
void for_each_run(const TpSplit& t, F&& f) {
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < t.dim; ++d) outer *= t.full[d];
  for (int d = t.dim + 1; d < t.full.ndim(); ++d) inner *= t.full[d];
  const int64_t block = t.full[t.dim] / t.blocks;
  const auto [begin, end] = TpSplit::piece(block, t.rank, t.size);
  int64_t local = 0;
  for (int64_t o = 0; o < outer; ++o)
    for (int b = 0; b < t.blocks; ++b) {
      const int64_t n = (end - begin) * inner;
      f((o * t.full[t.dim] + b * block + begin) * inner, local, n);
      local += n;
    }
}
}  // namespace

void TpSplit::shard(const float* whole, float* local) const {
  DS_ASSERT(split(), "shard() of a replicated parameter");
  for_each_run(*this, [&](int64_t w, int64_t l, int64_t n) { std::copy(whole + w, whole + w + n, local + l); });
}

void TpSplit::unshard(const float* local, float* whole) const {
  DS_ASSERT(split(), "unshard() of a replicated parameter");
  for_each_run(*this, [&](int64_t w, int64_t l, int64_t n) { std::copy(local + l, local + l + n, whole + w); });
}

}  // namespace ds
