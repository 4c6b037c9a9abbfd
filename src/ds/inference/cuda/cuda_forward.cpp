// make_device_forward for CUDA: the weights straight from the model's source (the file it was loaded from, or its
// CPU panels), and the ragged batch as the plain arrays CudaGpt takes (positions, each sequence's last token, the
// block tables laid end to end), built on the host for each pass.
#include <fmt/core.h>

#include <algorithm>

#include "ds/core/error.h"
#include "ds/inference/cuda/cuda_gpt.h"
#include "ds/inference/device_forward.h"
#include "ds/inference/model_runner.h"
#include "ds/nn/moe_gating.h"

namespace ds::inference {
namespace {

class CudaForward final : public DeviceForward {
 public:
  CudaForward(const InferenceModel& model, Device device, const DeviceForwardShape& shape)
      : config_(model.config()), device_(device) {
    cuda_impl::GptShape gs;
    gs.device = device.index;
    gs.n_layer = config_.n_layer;
    gs.n_head = config_.n_head;
    gs.n_embd = config_.n_embd;
    gs.vocab = config_.vocab_size;
    gs.context = config_.block_size;
    gs.kv_blocks = shape.kv_blocks;
    gs.kv_block_size = shape.kv_block_size;
    gs.max_tokens = shape.max_tokens;
    gs.max_seqs = shape.max_seqs;
    if (config_.moe.enabled()) {  // routed on the host as the CPU forward routes (Note [MoE serving])
      gs.experts = config_.experts_per_block();
      gs.moe_k = config_.moe.options.gate.k;
      gs.moe_residual = config_.moe.options.use_residual;
      gs.route = [this](int layer, const float* logits, int n, cuda_impl::MoeRoute& out) {
        nn::GateOptions gate = config_.moe.options.gate;
        gate.num_experts = config_.moe.experts_of(layer);
        gate.drop_tokens = false;
        const nn::Routing r = nn::route_tokens(logits, n, gate, false, 0);
        nn::ExpertGroups groups = nn::group_by_expert(r);
        out.offset = std::move(groups.offset);
        out.token = std::move(groups.token);
        out.row = std::move(groups.row);
        out.weight = r.weight;
      };
    }
    const WeightSource& weights = model.weights();
    gpt_ = std::make_unique<cuda_impl::CudaGpt>(
        gs, config_.weight_spec(), [&weights](const nn::Gpt2Weight& w, float* dst) { weights.read(w, dst); });
  }

  const float* forward(const RaggedBatch& batch) override {
    const int N = batch.n_tokens(), S = batch.n_seqs();
    pos_.resize(static_cast<size_t>(N));
    last_.resize(static_cast<size_t>(S));
    offset_.resize(static_cast<size_t>(S));
    tables_.clear();
    int32_t max_pos = 1;
    for (int s = 0; s < S; ++s) {
      const RaggedSequence& q = batch.seqs[static_cast<size_t>(s)];
      for (int j = 0; j < q.n_tokens; ++j) pos_[static_cast<size_t>(q.start + j)] = q.seen_tokens + j;
      max_pos = std::max(max_pos, q.seen_tokens + q.n_tokens);
      DS_ASSERT(max_pos <= config_.block_size, "position {} beyond the model's context {}", max_pos - 1,
                config_.block_size);
      last_[static_cast<size_t>(s)] = q.start + q.n_tokens - 1;
      offset_[static_cast<size_t>(s)] = static_cast<int32_t>(tables_.size());
      tables_.insert(tables_.end(), q.block_table, q.block_table + q.n_blocks);
    }
    cuda_impl::PassMeta m;
    m.n_tokens = N;
    m.n_seqs = S;
    m.n_table_entries = static_cast<int>(tables_.size());
    m.max_pos = max_pos;
    m.ids = batch.input_ids.data();
    m.pos = pos_.data();
    m.token_seq = batch.token_to_seq.data();
    m.last_token = last_.data();
    m.table_offset = offset_.data();
    m.tables = tables_.data();
    return gpt_->forward(m);
  }

  int64_t kv_bytes() const override { return gpt_->kv_bytes(); }
  std::string describe() const override {
    return fmt::format("{} ({}, weights {} MiB, KV cache {} MiB)", device_.str(), gpt_->device_name(),
                       gpt_->weight_bytes() >> 20, gpt_->kv_bytes() >> 20);
  }

 private:
  nn::Gpt2Config config_;
  Device device_;
  std::unique_ptr<cuda_impl::CudaGpt> gpt_;
  std::vector<int32_t> pos_, last_, offset_, tables_;
};

}  // namespace

std::unique_ptr<DeviceForward> make_device_forward(const InferenceModel& model, Device device,
                                                   const DeviceForwardShape& shape) {
  DS_ASSERT(!device.is_cpu(), "make_device_forward is for devices other than the CPU");
  return std::make_unique<CudaForward>(model, device, shape);
}

}  // namespace ds::inference
