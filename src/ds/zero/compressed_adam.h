// CompressedAdam: the compressed stages of DeepSpeed's 1-bit Adam and 0/1 Adam (runtime/fp16/onebit/adam.py,
// zoadam.py) over the replicated layout of ZeRO stage 0 (DeepSpeed refuses both with ZeRO), one error-compensated
// 1-bit all-reduce per step (comm/onebit.h) in place of the gradient all-reduce (Note [Compressed Adam]).
//
// Note [Compressed Adam]
// Steps are numbered from 1. In an exact step the gradients are all-reduced in full precision; in a compressed
// step each rank keeps its own gradient (GradientReducer::set_local) and a 1-bit all-reduce carries what the ranks
// share. u = m / (sqrt(max(v, m^2)) + eps) + wd p is the step's direction (the variance floor below).
//   1-bit Adam: steps 1..freeze_step are exact Adam with decoupled weight decay and no bias correction, run by
//     OptimizerStep (bit for bit DeepSpeed's warm-up). After them the variance v is frozen and every step is
//     compressed: m = b1 m + (1 - b1) g_local;  m = onebit_all_reduce(m);  p -= lr u.
//   0/1 Adam, steps 1..var_freeze_step: step s is a variance step, exact, when s % var_interval == 0:
//     m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, p -= lr u; else compressed: m = b1 m + (1 - b1)
//     onebit_all_reduce(g_local), v unchanged, p -= lr u. After each variance step a counter advances, and every
//     var_update_scaler of them var_interval doubles (1, 2, 4, ...).
//   0/1 Adam, later steps (local steps): m = b1 m + (1 - b1) g_local; p -= lr u; every local_step_interval
//     steps the ranks synchronise: d = (p - p_sync)(sqrt(v) + eps) (the local steps since the last
//     synchronisation, in momentum units), d = onebit_all_reduce(d), m = -d / lrs (lrs: the sum of the learning
//     rates since), p = p_sync + d / (sqrt(v) + eps), p_sync = p. The interval doubles every local_step_scaler
//     steps, up to local_step_clipper. The errors are zeroed on entering this stage (they held the gradients').
// DeepSpeed records the local steps in a buffer (acc -= lr u) and takes them back as p - acc, which leaves each
// replica with its own rounding after every synchronisation, so replicas drift apart over a run; here the
// weights at the last synchronisation are kept instead (the same memory: one fp32 copy), and every rank ends a
// synchronisation with the same bits.
// The variance floor: a variance that is frozen, or updated only now and then, cannot follow the gradient, so an
// element whose variance is small (an embedding row whose token the batches had not met lately, v having
// forgotten it) takes a step of m / sqrt(v) as large as it likes when its gradient comes back. In gpt2-mini at
// 1,024 tokens per step, 1-bit Adam diverged within three steps of its freeze, and 0/1 Adam at the variance step
// after a compressed one that met such a row, even on one rank. Adam's own v is never much below m^2 (the average
// of squares bounds the square of the average), so every step here uses max(v, m^2): the same step where the
// variance is informed (steady gradients have m^2 <= v), a step of at most lr per element where it is not.
// DeepSpeed has no such floor (its users freeze after tens of thousands of steps, on batches that meet the whole
// vocabulary).
// The 1-bit all-reduce works on each parameter tensor with its own scales (DeepSpeed's call per parameter), all
// of them in one call. Unlike DeepSpeed, the first step is a training step (DeepSpeed's first call only allocates
// its buffers), so its stage boundaries fall one step earlier in the data; and the schedules are functions of the
// step count, replayed after a checkpoint is loaded. The compression errors are not saved: a checkpoint loads
// with them zeroed (DeepSpeed resets them too); a 0/1 Adam checkpoint taken between synchronisations holds rank
// 0's weights, from which every rank goes on. So a resume is exact within the exact stages and close elsewhere.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "ds/comm/onebit.h"
#include "ds/config/config.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/zero/optimizer_state.h"
#include "ds/zero/optimizer_step.h"
#include "ds/zero/partition_layout.h"
#include "ds/zero/precision.h"

namespace ds::zero {

class CompressedAdam {
 public:
  // `tensors`: the parameter tensors as [begin, end) ranges of partition elements, in order (each gets its own
  // 1-bit scales). The layout must be replicated (stage 0).
  CompressedAdam(const PartitionLayout& layout, OptimizerStateStore& state, const ZeroPrecision& precision,
                 comm::Communicator& comm, const config::OptimizerConfig& options,
                 const std::vector<std::pair<int64_t, int64_t>>& tensors);

  // Whether step `step` (1-based) is exact: its gradients all-reduced in full precision.
  bool exact(int64_t step) const;
  // Whether this class takes step `step` (else OptimizerStep does: 1-bit Adam's warm-up).
  bool steps(int64_t step) const;
  // Step number `step` with gradients multiplied by grad_scale: the sum over the N ranks for an exact step (1/N is
  // applied here), this rank's own for a compressed one. Call after_step(step) after every step.
  void step(int64_t step, float lr, float grad_scale, const cpu::AdamParams& hyper,
            const OptimizerStep::OwnedFn& params, const OptimizerStep::OwnedFn& grads);
  void after_step(int64_t step);
  // Puts the schedules where they are after `steps` steps and resets what checkpoints do not keep.
  void restore(int64_t steps);
  int64_t var_interval() const { return var_interval_; }
  int64_t local_step_interval() const { return local_interval_; }

 private:
  bool local_stage(int64_t step) const;
  // f(part, staged, count) for each piece of the partition range [begin, end) that belongs to a tensor: partition
  // elements [part, part + count) are staging elements [staged, staged + count).
  template <typename F>
  void for_pieces(int64_t begin, int64_t end, F&& f) const;
  // The state tiles, with `fn(tile)` between acquire and release.
  template <typename F>
  void for_tiles(StateMask which, F&& fn);
  // Every piece of the tensors, with its params/grads views and state views (fp32 master in mixed precision).
  struct Piece;
  template <typename F>
  void for_each_piece(StateMask which, const OptimizerStep::OwnedFn& params, const OptimizerStep::OwnedFn& grads,
                      F&& f);

  const PartitionLayout& layout_;
  OptimizerStateStore& state_;
  ZeroPrecision precision_;
  config::OptimizerConfig options_;
  std::vector<std::pair<int64_t, int64_t>> tensors_;
  std::vector<int64_t> staged_offset_;  // each tensor's first element in the staging buffer
  comm::OneBitAllReduce onebit_;
  Tensor staging_;  // fp32 [sum of the tensors' sizes]: what the 1-bit all-reduce averages
  Tensor base_;     // 0/1 Adam: fp32 [partition]: the weights at the last synchronisation
  Tensor wide_;     // 16-bit gradients widened, a piece at a time
  double lrs_ = 0;
  int64_t var_interval_ = 1, var_counter_ = 0, local_interval_ = 1, local_counter_ = 0;
  bool base_valid_ = false;  // base_ holds the weights of the last synchronisation
};

}  // namespace ds::zero
