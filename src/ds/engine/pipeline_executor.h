// The pipeline executor: one stage's side of a pipelined training step (DESIGN decision 8). It runs the stage's
// instruction list (pipe/schedule.h) in order: a forward receives the micro-batch's activation from the previous
// stage (the first stage reads the tokens), runs the stage's layers and sends the result on (the last stage
// computes the loss); a backward receives the output gradient from the next stage, runs the stage's backward and
// sends the input gradient back; ZB-H1 splits the backward into its input- and weight-gradient passes
// (Note [Split backward] in nn/module_runner.cpp). Sends are asynchronous and receives block, so a stage waits only
// for what it needs, and orders taken from one schedule cannot deadlock. Each micro-batch in flight has its own
// activation stash (Ctx); the schedule bounds how many exist at once.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/nn/models/gpt2.h"
#include "ds/pipe/schedule.h"
#include "ds/zero/zero_optimizer.h"

namespace ds::engine {

// What the executor needs of a stage: its layers, the width of the activations between stages, and a check of a
// micro-batch's tokens that returns how many targets count.
struct StageLayers {
  nn::ModuleRunner* runner = nullptr;
  int width = 0;
  std::function<int64_t(const int32_t* inputs, const int32_t* targets, int B, int T)> check_tokens;
  // This stage's GPT-2 layers.
  static StageLayers of(nn::Gpt2& model);
};

class PipelineExecutor {
 public:
  using BatchFn = std::function<void(int32_t* inputs, int32_t* targets)>;
  // `stages`: the communicator of this rank's pipeline, whose rank r is stage r. `optimizer` (may be null) hears of
  // each pass as a micro-batch that is not the last, so it reduces nothing before the whole schedule is done.
  PipelineExecutor(const StageLayers& layers, zero::ZeroOptimizer* optimizer, comm::Communicator& stages,
                   pipe::Schedule kind, int micro_batches, int micro_batch_size, int seq_len);

  // One step's passes over `micro_batches` micro-batches from `next` (every stage reads each micro-batch: the
  // first uses its tokens, the last its targets). Parameter gradients are those of grad_scale * the mean loss of
  // each micro-batch, accumulated. Returns the sum over the micro-batches of their mean loss on the last stage, 0 on
  // the others. The gradient reduction at the boundary is the caller's.
  double train(const BatchFn& next, float grad_scale);
  // One forward of a batch of `rows` sequences through the stages: its mean loss on the last stage, 0 elsewhere.
  double evaluate(const int32_t* inputs, const int32_t* targets, int rows);

  // Seconds this stage spent in passes (busy) and blocked on a peer (waiting), since the last call.
  struct Timing {
    double busy = 0, waiting = 0;
  };
  Timing take_timing();

 private:
  struct Slot {
    nn::Ctx ctx;
    nn::Pass pass;
    std::vector<int32_t> inputs, targets;
    int64_t count = 0;                  // target tokens that count
    std::vector<comm::WorkPtr> sends;   // from this slot's buffers, waited for before it is reused
  };
  Slot& take_slot(int micro);
  void finish_sends(Slot& slot);
  void forward(int micro, const BatchFn& next, float grad_scale, double& loss_sum);
  void backward(int micro, bool split);
  void weights(int micro);

  StageLayers layers_;
  zero::ZeroOptimizer* optimizer_;
  comm::Communicator& stages_;
  int B_, T_, C_;
  int stage_, last_;
  std::vector<std::vector<pipe::Instr>> schedule_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<int> slot_of_;   // micro-batch -> slot, -1 when none
  std::vector<bool> slot_busy_;
  nn::Ctx eval_ctx_;
  Timing timing_;
};

}  // namespace ds::engine
