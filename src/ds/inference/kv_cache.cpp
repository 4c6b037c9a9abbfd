// The block pool, the per-sequence state and the storage. Every check of a reservation comes before any change,
// and a refused free puts back what it had pushed, so an error never leaves a half-updated free list or a
// sequence tracked without its blocks.
#include "ds/inference/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "ds/core/error.h"

namespace ds::inference {

// ---- BlockedAllocator ----
BlockedAllocator::BlockedAllocator(int32_t num_blocks) : next_(static_cast<size_t>(std::max(num_blocks, 0))) {
  DS_CHECK_AS(ConfigError, num_blocks > 0, "[kv] the KV cache needs at least one block, got {}; raise the KV memory "
              "budget or the block count", num_blocks);
  for (int32_t i = 0; i < num_blocks; ++i) next_[static_cast<size_t>(i)] = i + 1;
  head_ = 0;
  free_ = num_blocks;
}

void BlockedAllocator::allocate(int32_t n, std::vector<int32_t>& out) {
  DS_CHECK(n >= 0 && n <= free_, "[kv] asked for {} KV blocks but {} are free", n, free_);
  for (int32_t i = 0; i < n; ++i) {
    const int32_t b = head_;
    head_ = next_[static_cast<size_t>(b)];
    next_[static_cast<size_t>(b)] = kUsed;
    out.push_back(b);
  }
  free_ -= n;
}

void BlockedAllocator::free(std::span<const int32_t> blocks) {
  for (size_t i = 0; i < blocks.size(); ++i) {
    const int32_t b = blocks[i];
    DS_CHECK(b >= 0 && b < num_blocks(), "[kv] freeing KV block {} but the cache has blocks 0..{}", b,
             num_blocks() - 1);
    DS_CHECK(next_[static_cast<size_t>(b)] == kUsed, "[kv] KV block {} is freed twice", b);
  }
  // Push one at a time; a block listed twice in one call is found free on its second visit, and the blocks
  // already pushed by this call are taken back, so a refused call frees nothing.
  for (size_t i = 0; i < blocks.size(); ++i) {
    const int32_t b = blocks[i];
    if (next_[static_cast<size_t>(b)] != kUsed) {
      for (size_t j = 0; j < i; ++j) head_ = next_[static_cast<size_t>(head_)];  // undo: they are the top i
      for (size_t j = 0; j < i; ++j) next_[static_cast<size_t>(blocks[j])] = kUsed;
      DS_THROW(Error, "[kv] KV block {} appears twice in one free", b);
    }
    next_[static_cast<size_t>(b)] = head_;
    head_ = b;
  }
  free_ += static_cast<int32_t>(blocks.size());
}

// ---- KvStateManager ----
KvStateManager::KvStateManager(int32_t kv_block_count, int32_t kv_block_size, int32_t max_tracked_sequences,
                               int32_t max_context)
    : block_size_(kv_block_size), max_tracked_(max_tracked_sequences), max_context_(max_context),
      allocator_(kv_block_count), refs_(static_cast<size_t>(std::max(kv_block_count, 0)), 0) {
  DS_CHECK_AS(ConfigError, kv_block_size > 0, "[kv] kv_block_size must be positive, got {}", kv_block_size);
  DS_CHECK_AS(ConfigError, max_tracked_sequences > 0, "[kv] max_tracked_sequences must be positive, got {}",
              max_tracked_sequences);
  DS_CHECK_AS(ConfigError, max_context > 0, "[kv] max_context must be positive, got {}", max_context);
}

const SequenceKv* KvStateManager::find(uint64_t uid) const {
  const auto it = seqs_.find(uid);
  return it == seqs_.end() ? nullptr : &it->second;
}

static int32_t ceil_div(int64_t a, int64_t b) { return static_cast<int32_t>((a + b - 1) / b); }

bool KvStateManager::shared_tail(const SequenceKv& s) const {
  return s.seen_tokens % block_size_ != 0 && !s.blocks.empty() && refs_[static_cast<size_t>(s.blocks.back())] > 1;
}

KvQuery KvStateManager::query(uint64_t uid, int32_t max_tokens, int32_t max_blocks) const {
  const SequenceKv* s = find(uid);
  const int32_t seen = s ? s->seen_tokens : 0;
  const int32_t allocated = s ? static_cast<int32_t>(s->blocks.size()) : 0;
  const int32_t cow = s && shared_tail(*s) ? 1 : 0;
  int32_t tokens = std::max(0, std::min(max_tokens, max_context_ - seen));
  auto blocks_for = [&](int32_t t) {
    return t == 0 ? 0 : std::max(0, ceil_div(int64_t(seen) + t, block_size_) - allocated) + cow;
  };
  if (blocks_for(tokens) <= max_blocks) return {tokens, blocks_for(tokens)};
  tokens = max_blocks < cow ? 0 : std::max(0, std::min(tokens, (max_blocks - cow + allocated) * block_size_ - seen));
  return {tokens, blocks_for(tokens)};
}

int32_t KvStateManager::remaining_block_capacity(uint64_t uid) const {
  const SequenceKv* s = find(uid);
  if (!s || shared_tail(*s)) return 0;
  return static_cast<int32_t>(s->blocks.size()) * block_size_ - s->seen_tokens;
}

void KvStateManager::take_blocks(int32_t n, std::vector<int32_t>& out) {
  const size_t first = out.size();
  allocator_.allocate(n, out);
  for (size_t i = first; i < out.size(); ++i) refs_[static_cast<size_t>(out[i])] = 1;
}

const SequenceKv& KvStateManager::reserve(uint64_t uid, int32_t n_tokens) {
  auto it = seqs_.find(uid);
  const bool is_new = it == seqs_.end();
  const int32_t seen = is_new ? 0 : it->second.seen_tokens;
  const int32_t held = is_new ? 0 : static_cast<int32_t>(it->second.blocks.size());
  // Every check before any change, so a refused reservation leaves no trace.
  DS_CHECK(!is_new || tracked_sequences() < max_tracked_, "[kv] cannot track sequence {}: {} sequences are tracked, "
           "the limit is {}", uid, tracked_sequences(), max_tracked_);
  DS_CHECK(n_tokens >= 0 && seen + n_tokens <= max_context_, "[kv] sequence {} would reach {} tokens; the model's "
           "context is {}", uid, seen + n_tokens, max_context_);
  const bool cow = !is_new && n_tokens > 0 && shared_tail(it->second);
  const int32_t need = std::max(0, ceil_div(int64_t(seen) + n_tokens, block_size_) - held) + (cow ? 1 : 0);
  DS_CHECK(need <= free_blocks(), "[kv] sequence {} needs {} more KV blocks but {} are free", uid, need, free_blocks());
  if (is_new) it = seqs_.emplace(uid, SequenceKv{}).first;
  std::vector<int32_t>& blocks = it->second.blocks;
  if (cow) {  // the new tokens go into the shared last block: this sequence gets its own copy
    std::vector<int32_t> fresh;
    take_blocks(1, fresh);
    --refs_[static_cast<size_t>(blocks.back())];
    copies_.emplace_back(blocks.back(), fresh[0]);
    blocks.back() = fresh[0];
  }
  take_blocks(need - (cow ? 1 : 0), blocks);
  return it->second;
}

void KvStateManager::advance(uint64_t uid, int32_t n_tokens) {
  const auto it = seqs_.find(uid);
  DS_ASSERT(it != seqs_.end(), "advance of untracked sequence {}", uid);
  SequenceKv& s = it->second;
  DS_ASSERT(s.seen_tokens + n_tokens <= static_cast<int32_t>(s.blocks.size()) * block_size_,
            "sequence {} advanced past its blocks", uid);
  s.seen_tokens += n_tokens;
}

bool KvStateManager::flush(uint64_t uid) {
  const auto it = seqs_.find(uid);
  if (it == seqs_.end()) return false;
  std::vector<int32_t> last_holder;
  for (const int32_t b : it->second.blocks) {
    DS_ASSERT(refs_[static_cast<size_t>(b)] > 0, "KV block {} of sequence {} has no holder", b, uid);
    if (--refs_[static_cast<size_t>(b)] == 0) last_holder.push_back(b);
  }
  allocator_.free(last_holder);
  seqs_.erase(it);
  return true;
}

void KvStateManager::fork(uint64_t parent, uint64_t child) {
  const auto it = seqs_.find(parent);
  DS_CHECK(it != seqs_.end(), "[kv] cannot fork sequence {}: it is not tracked", parent);
  DS_CHECK(!seqs_.contains(child), "[kv] cannot fork into sequence {}: it is already tracked", child);
  DS_CHECK(tracked_sequences() < max_tracked_, "[kv] cannot fork sequence {}: {} sequences are tracked, the limit "
           "is {}", parent, tracked_sequences(), max_tracked_);
  SequenceKv copy = it->second;
  for (const int32_t b : copy.blocks) ++refs_[static_cast<size_t>(b)];
  seqs_.emplace(child, std::move(copy));
}

std::vector<std::pair<int32_t, int32_t>> KvStateManager::take_copies() {
  std::vector<std::pair<int32_t, int32_t>> out;
  out.swap(copies_);
  return out;
}

// ---- KvCache ----
DType parse_kv_dtype(const std::string& name) {
  if (name == "fp32") return DType::f32;
  if (name == "bf16") return DType::bf16;
  DS_THROW(ConfigError, "[serve] unknown KV cache dtype '{}'; expected fp32 (the default) or bf16 (half the memory "
           "per token, keys and values rounded to bf16)", name);
}

const char* kv_dtype_name(DType dtype) { return dtype == DType::bf16 ? "bf16" : "fp32"; }

void check_kv_dtype_on_device(DType dtype, Device device) {
  DS_CHECK_AS(ConfigError, dtype == DType::f32 || dtype == DType::bf16, "[kv] a KV cache holds fp32 or bf16, not {}",
              dtype_name(dtype));
  DS_CHECK_AS(ConfigError, device.is_cpu() || dtype == DType::f32, "[serve] --kv-dtype {} is a CPU option; on {} the "
              "KV cache is fp32: leave out --kv-dtype or use --device cpu", kv_dtype_name(dtype), device.str());
}

int64_t KvCache::bytes_per_block(int n_layer, int NH, int HS, int32_t kv_block_size, DType dtype) {
  return int64_t(kv_block_size) * n_layer * 2 * NH * HS * int64_t(dtype_size(dtype));
}

int32_t KvCache::blocks_for_budget(int64_t bytes, int n_layer, int NH, int HS, int32_t kv_block_size, DType dtype) {
  const int64_t per = bytes_per_block(n_layer, NH, HS, kv_block_size, dtype);
  return static_cast<int32_t>(std::clamp<int64_t>(bytes / per, 1, int64_t(1) << 30));
}

KvCache::KvCache(int n_layer, int NH, int HS, int32_t kv_block_count, int32_t kv_block_size, DType dtype)
    : block_count_(kv_block_count), block_size_(kv_block_size), slot_elements_(int64_t(2) * NH * HS) {
  DS_CHECK_AS(ConfigError, kv_block_count > 0 && kv_block_size > 0, "[kv] the KV cache needs a positive block count "
              "and block size, got {} and {}", kv_block_count, kv_block_size);
  check_kv_dtype_on_device(dtype, Device::cpu());
  storage_ = Tensor::zeros({int64_t(n_layer) * kv_block_count * kv_block_size * slot_elements_}, dtype,
                           Category::kv_cache);
}

void KvCache::copy_block(int32_t src, int32_t dst) {
  const size_t bytes = static_cast<size_t>(block_size_) * static_cast<size_t>(slot_elements_) *
                       dtype_size(storage_.dtype());
  const int layers = static_cast<int>(storage_.numel() / (int64_t(block_count_) * block_size_ * slot_elements_));
  for (int l = 0; l < layers; ++l) std::memcpy(slot(l, dst, 0), slot(l, src, 0), bytes);
}

}  // namespace ds::inference
