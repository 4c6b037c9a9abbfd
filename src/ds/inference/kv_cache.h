// The blocked KV cache (DESIGN decision 11, DeepSpeed FastGen's ragged/kv_cache.py and blocked_allocator.py).
// Memory is cut into fixed-size blocks of kv_block_size token slots; a sequence owns a list of blocks (its block
// table) and grows one block at a time, so sequences of any length share one pool with no fragmentation beyond
// the last block of each. Three pieces, separable so the scheduler can be tested with no model at all:
//   BlockedAllocator  a free list held as an int32 next-array plus a head index (O(1) pop and push); a block id
//                     freed twice, or never allocated, is an error, not a silent corruption of the list.
//   KvStateManager    the tracked sequences (seen tokens, block table) and DeepSpeed's KV arithmetic (query).
//                     A sequence can be forked: the child shares the parent's blocks (reference counts), and the
//                     first write into a shared, partly filled last block copies it first (copy-on-write), so n
//                     choices of one prompt hold its blocks once.
//   KvCache           the storage: per layer [kv_block_count, kv_block_size, 2 (K, V), NH, HS] elements, fp32 or
//                     bf16 (half the bytes, so twice the blocks for a budget; keys and values are rounded to
//                     nearest even as they are written and widened exactly as attention reads them), accounted as
//                     kv_cache in the memory tracker; sized from a memory budget when no count is given.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ds/core/device.h"
#include "ds/core/tensor.h"

namespace ds::inference {

class BlockedAllocator {
 public:
  explicit BlockedAllocator(int32_t num_blocks);
  int32_t num_blocks() const { return static_cast<int32_t>(next_.size()); }
  int32_t free_blocks() const { return free_; }
  // Appends n block ids to out. Throws ds::Error when fewer than n are free (callers check free_blocks first).
  void allocate(int32_t n, std::vector<int32_t>& out);
  // Returns blocks to the pool. Throws ds::Error naming the id for an id out of range or a block that is already
  // free (a double free); no block of the call is freed then.
  void free(std::span<const int32_t> blocks);

 private:
  static constexpr int32_t kUsed = -1;
  std::vector<int32_t> next_;  // for a free block: the next free block (num_blocks() ends the list); kUsed if used
  int32_t head_ = 0;
  int32_t free_ = 0;
};

// One tracked sequence.
struct SequenceKv {
  int32_t seen_tokens = 0;      // tokens whose K and V are in the cache
  std::vector<int32_t> blocks;  // the block table: slot t of the sequence is in blocks[t / kv_block_size]
};

// What a sequence may run now (DeepSpeed's get_kv_requirements).
struct KvQuery {
  int32_t tokens = 0;  // of the tokens asked for, how many fit
  int32_t blocks = 0;  // new blocks they need
};

class KvStateManager {
 public:
  // max_context caps seen + new tokens of any sequence (the model's position table).
  KvStateManager(int32_t kv_block_count, int32_t kv_block_size, int32_t max_tracked_sequences, int32_t max_context);

  int32_t kv_block_size() const { return block_size_; }
  int32_t kv_block_count() const { return allocator_.num_blocks(); }
  int32_t free_blocks() const { return allocator_.free_blocks(); }
  int32_t used_blocks() const { return kv_block_count() - free_blocks(); }
  int32_t max_tracked_sequences() const { return max_tracked_; }
  int32_t max_context() const { return max_context_; }
  int32_t tracked_sequences() const { return static_cast<int32_t>(seqs_.size()); }
  // nullptr for a sequence that is not tracked (never put, or flushed).
  const SequenceKv* find(uint64_t uid) const;

  // For max_tokens new tokens of uid (a new uid has seen 0 and holds no blocks): req = ceil((seen + max_tokens) /
  // block) - allocated, plus one when the last block is shared and partly filled (it is copied before the write).
  // If req <= max_blocks, all max_tokens fit with req new blocks; otherwise the tokens that fit in max_blocks new
  // blocks, and the blocks they need. Tokens are also capped at max_context - seen.
  KvQuery query(uint64_t uid, int32_t max_tokens, int32_t max_blocks) const;
  // Token slots left in the blocks uid already holds (0 for an untracked uid, and for a shared last block).
  int32_t remaining_block_capacity(uint64_t uid) const;

  // Tracks uid if new and allocates the blocks n_tokens more tokens need; seen_tokens is not advanced (advance does
  // that once the forward has written the cache). Throws ds::Error when the blocks, the tracked-sequence limit or
  // max_context would be exceeded.
  const SequenceKv& reserve(uint64_t uid, int32_t n_tokens);
  void advance(uint64_t uid, int32_t n_tokens);
  // Frees uid's blocks (those no other sequence shares) and stops tracking it; false for an untracked uid.
  bool flush(uint64_t uid);
  // Tracks child as a copy of parent (its tokens and blocks, shared). Throws ds::Error when parent is untracked,
  // child is tracked, or the tracked-sequence limit is reached.
  void fork(uint64_t parent, uint64_t child);
  // The copies reserve made for copy-on-write since the last call, as (source, destination) blocks: the storage
  // must copy them before the forward writes the new tokens.
  std::vector<std::pair<int32_t, int32_t>> take_copies();
  int32_t block_refs(int32_t block) const { return refs_[static_cast<size_t>(block)]; }

 private:
  bool shared_tail(const SequenceKv& s) const;
  void take_blocks(int32_t n, std::vector<int32_t>& out);

  int32_t block_size_;
  int32_t max_tracked_;
  int32_t max_context_;
  BlockedAllocator allocator_;
  std::unordered_map<uint64_t, SequenceKv> seqs_;
  std::vector<int32_t> refs_;  // per block: the sequences holding it (0: free)
  std::vector<std::pair<int32_t, int32_t>> copies_;
};

// "fp32" or "bf16", the element type of a KV cache; ConfigError otherwise.
DType parse_kv_dtype(const std::string& name);
const char* kv_dtype_name(DType dtype);
// ConfigError unless a KV cache of `dtype` can live on `device`: f32 anywhere, bf16 on the CPU only.
void check_kv_dtype_on_device(DType dtype, Device device);

// KV storage for a model with n_layer layers of NH heads of HS channels.
class KvCache {
 public:
  KvCache(int n_layer, int NH, int HS, int32_t kv_block_count, int32_t kv_block_size, DType dtype = DType::f32);
  // Blocks that fit in `bytes` (at least 1) for this shape: bytes / (kv_block_size * n_layer * 2 * NH * HS *
  // the element size).
  static int32_t blocks_for_budget(int64_t bytes, int n_layer, int NH, int HS, int32_t kv_block_size, DType dtype);
  static int64_t bytes_per_block(int n_layer, int NH, int HS, int32_t kv_block_size, DType dtype);

  int32_t kv_block_count() const { return block_count_; }
  int32_t kv_block_size() const { return block_size_; }
  DType dtype() const { return storage_.dtype(); }
  // The slot of one token: K at [0, C), V at [C, 2C) elements of dtype(), C = NH * HS (head h at h * HS).
  void* slot(int layer, int32_t block, int32_t offset) {
    const int64_t index = ((int64_t(layer) * block_count_ + block) * block_size_ + offset) * slot_elements_;
    return static_cast<char*>(storage_.raw()) + index * int64_t(dtype_size(storage_.dtype()));
  }
  const void* slot(int layer, int32_t block, int32_t offset) const {
    return const_cast<KvCache*>(this)->slot(layer, block, offset);
  }
  int64_t bytes() const { return storage_.nbytes(); }
  // Every slot of block src, in every layer, into block dst (copy-on-write).
  void copy_block(int32_t src, int32_t dst);

 private:
  int32_t block_count_, block_size_;
  int64_t slot_elements_;  // 2 * C
  Tensor storage_;
};

}  // namespace ds::inference
