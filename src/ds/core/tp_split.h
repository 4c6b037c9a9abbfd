// Where a rank's share of a tensor-parallel parameter sits in the whole parameter: the arithmetic both the model
// (nn/parameter.h) and the checkpoint reader (ckpt/checkpoint_format.h) need to cut a whole tensor into shares and
// put shares back together.
#pragma once

#include <cstdint>
#include <utility>

#include "ds/core/shape.h"

namespace ds {

// How a parameter is split across the ranks of a tensor-parallel group (Megatron; Note [Tensor-parallel shards] in
// nn/tensor_parallel.cpp). Dimension `dim` of the whole parameter is made of `blocks` equal blocks (3 for the fused
// QKV weight, else 1), and each block is cut into `size` contiguous pieces, rank r holding piece r of every block.
// Pieces are ceil(extent / size) long, the last ones shorter or empty, so an uneven extent (the vocabulary) splits
// too. dim -1: replicated, every rank holds the whole parameter.
struct TpSplit {
  int dim = -1;
  int blocks = 1;
  int rank = 0, size = 1;
  Shape full;  // the whole parameter's shape (empty while replicated)

  bool split() const { return dim >= 0; }
  // Rank r's range [begin, end) of one block of `extent` elements.
  static std::pair<int64_t, int64_t> piece(int64_t extent, int rank, int size);
  // This rank's shape of a parameter shaped `full` (full itself when replicated).
  Shape local_shape(const Shape& whole) const;
  // Copies this rank's elements of the whole parameter into `local` (row-major), or back.
  void shard(const float* whole, float* local) const;
  void unshard(const float* local, float* whole) const;
};

}  // namespace ds
