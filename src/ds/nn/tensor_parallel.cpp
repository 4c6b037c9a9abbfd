// Column- and row-parallel linear layers (tensor_parallel.h).
#include "ds/nn/tensor_parallel.h"

#include "ds/ops/ops.h"

namespace ds::nn {

// Note [Tensor-parallel shards]
// A split parameter is declared with this rank's shape, so the flat buffers, ZeRO's partitions over the data group
// and the optimizer all see an ordinary (smaller) parameter; Parameter::tp says where its elements sit in the whole
// one (TpSplit::shard / unshard), which is all that initialisation, weight loading and gathering the full model
// need. The fused QKV weight [C, 3C] is split in three blocks so that each rank holds the q, k and v columns of the
// same heads: [q_r | k_r | v_r], which is the layout the attention kernel expects for n_head / size heads.
namespace {
int checked_piece(const std::string& name, int extent, int blocks, const TensorParallelGroup& g) {
  DS_CHECK_AS(ConfigError, extent % (blocks * g.size()) == 0,
              "[model] {}: {} columns cannot be split evenly across {} tensor-parallel ranks; choose a tensor-parallel "
              "size that divides n_head and n_embd", name, extent / blocks, g.size());
  return extent / g.size();
}
}  // namespace

ColumnParallelLinear::ColumnParallelLinear(ParameterStore& store, const std::string& name, int in, int out, bool bias,
                                           int blocks, TensorParallelGroup& group)
    : Linear(store, name, in, checked_piece(name, out, blocks, group), bias), group_(group) {
  weight()->tp = TpSplit{1, blocks, group.rank(), group.size(), Shape{in, out}};
  if (this->bias()) this->bias()->tp = TpSplit{0, blocks, group.rank(), group.size(), Shape{out}};
}

Tensor ColumnParallelLinear::backward(Ctx& ctx, const Tensor& dy) {
  Tensor dx = Linear::backward(ctx, dy);
  group_.all_reduce_sum(dx);  // "f": every rank's share of the input gradient
  return dx;
}

RowParallelLinear::RowParallelLinear(ParameterStore& store, const std::string& name, int in, int out, bool bias,
                                     TensorParallelGroup& group)
    : Linear(store, name, checked_piece(name, in, 1, group), out, bias), group_(group) {
  weight()->tp = TpSplit{0, 1, group.rank(), group.size(), Shape{in, out}};
}

Tensor RowParallelLinear::forward(Ctx& ctx, const Tensor& x) {
  DS_CHECK_AS(ShapeError, x.numel() % in_features() == 0, "[linear] {}: expected activations with {} columns, got {}",
              name(), in_features(), x.str());
  const int64_t N = x.numel() / in_features();
  Tensor y = ctx.act().alloc({N, out_features()});
  // The bias joins the sum once, on rank 0's partial product.
  ops::linear_forward(y, x.view({N, in_features()}), weight()->data,
                      bias() && group_.rank() == 0 ? bias()->data : Tensor());
  group_.all_reduce_sum(y);  // "g"
  if (ctx.training) ctx.saved(this) = {x};
  return y;
}

LinearFactory tensor_parallel_linear(TensorParallelGroup& group) {
  return [&group](ParameterStore& store, const std::string& name, int in, int out, bool bias, LinearKind kind,
                  int blocks) -> std::unique_ptr<Linear> {
    if (kind == LinearKind::column)
      return std::make_unique<ColumnParallelLinear>(store, name, in, out, bias, blocks, group);
    return std::make_unique<RowParallelLinear>(store, name, in, out, bias, group);
  };
}

}  // namespace ds::nn
