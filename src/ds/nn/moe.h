// The Mixture-of-Experts layer (DeepSpeed's deepspeed.moe.layer.MoE with GShard's dispatch, DESIGN decision 8): a
// gate routes each token to k of E expert MLPs (moe_gating.h); the experts are spread over an expert-parallel
// group of ep ranks, E/ep each, and tokens travel to their experts and back by all-to-all. See Note [MoE dispatch]
// in moe.cpp for the capacity-based and the dropless path. The gate and the residual MLP are dense parameters (in
// the model's store, reduced over the whole data-parallel group); the experts live in a store of their own, which
// the engine reduces over the expert-data-parallel group only.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ds/nn/block.h"
#include "ds/nn/layers.h"
#include "ds/nn/moe_gating.h"

namespace ds::nn {

// The ranks that share one layer's experts (DeepSpeed's expert-parallel group). Implemented over a communicator by
// the engine; nn does not depend on comm.
class ExpertParallelGroup {
 public:
  virtual ~ExpertParallelGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Block r of `send` (send_counts[r] floats, contiguous in rank order) goes to rank r; block r of `recv` comes
  // from rank r.
  virtual void all_to_all_v(const float* send, const std::vector<size_t>& send_counts, float* recv,
                            const std::vector<size_t>& recv_counts) = 0;
  // n counts to each rank: send[r*n, r*n + n) to rank r; recv[r*n, r*n + n) from rank r.
  virtual void all_to_all_counts(const int32_t* send, int32_t* recv, size_t n) = 0;
};

// The MoE options of a model (Gpt2Config::moe). DeepSpeed's MoE layer defaults; the loss coefficients are
// Megatron-DeepSpeed's (--moe-loss-coeff, the DeepSpeed-MoE example scripts' 0.01) and ST-MoE's z-loss (off).
struct MoeOptions {
  GateOptions gate;
  bool use_residual = false;     // Residual-MoE: out = moe(x) * p0 + mlp(x) * p1, p = softmax(coefficient(x))
  double aux_loss_coef = 0.01;   // the loss adds aux_loss_coef * (sum of the layers' l_aux)
  double z_loss_coef = 0.0;      // and z_loss_coef * (sum of the layers' router z-losses)
};

// Routing statistics a pass adds up (Pass::moe): per MoE layer, the assignments routed to each expert; in all,
// assignments, drops and the auxiliary losses (sums over layers, as they enter the loss before their coefficients).
struct MoeStats {
  std::vector<std::vector<int64_t>> routed;  // [moe layer][expert]
  int64_t assignments = 0, dropped = 0;
  double aux_loss = 0, z_loss = 0;
  int64_t passes = 0;  // forward passes counted (a layer counts its pass once per micro-batch)
  void add(int layer, const Routing& r);
  void clear();
};

// What a transformer block needs to hold an MoE layer in place of its MLP (layers.h).
struct MoeBlockArgs {
  ParameterStore* experts_store = nullptr;
  MoeOptions options;
  ExpertParallelGroup* ep = nullptr;
  int index = 0;  // the MoE layer's ordinal in the model
};

class MoeLayer : public Module {
 public:
  // `index`: this MoE layer's ordinal in the model (statistics and noise streams). `experts_store` receives the
  // parameters of this rank's E/ep experts, named "<name>.experts.<e>.c_fc.weight" etc. by their global index.
  MoeLayer(ParameterStore& store, ParameterStore& experts_store, const std::string& name, int C,
           const MoeOptions& options, ExpertParallelGroup* ep, int index);
  Tensor forward(Ctx& ctx, const Tensor& x, Pass& pass);
  Tensor backward(Ctx& ctx, const Tensor& dy, Pass& pass);
  void collect_parameters(std::vector<Parameter*>& out) const override;  // the dense ones and the local experts
  // The owner of the experts' gather unit (the runner brackets it as a unit of the block).
  const Module* experts_unit() const { return &experts_owner_; }
  int num_experts() const { return options_.gate.num_experts; }
  int local_experts() const { return static_cast<int>(experts_.size()); }

 private:
  struct Saved;  // what backward needs beyond the sub-modules' own stashes
  class UnitOwner final : public Module {
   public:
    using Module::Module;
    void collect_parameters(std::vector<Parameter*>&) const override {}
  };
  // The expert side of a dispatch: runs (backward: back-propagates) every local expert over the rows the ranks sent
  // it, given in `recv` as [src][local expert][rows], and writes the results in the same layout.
  Tensor run_experts(Ctx& ctx, Saved& s, const Tensor& recv, bool backward);
  // Exchanges a token-side buffer [dst][local expert][rows] for the expert side [src][local expert][rows], or back.
  Tensor exchange(Ctx& ctx, const Saved& s, const Tensor& rows, bool to_experts, bool in_scratch);

  int C_;
  MoeOptions options_;
  ExpertParallelGroup* ep_;
  int index_;
  int first_expert_;
  Linear gate_;
  std::unique_ptr<Mlp> residual_;
  std::unique_ptr<Linear> coefficient_;
  UnitOwner experts_owner_;
  std::vector<std::unique_ptr<Mlp>> experts_;
};

}  // namespace ds::nn
