// DataLoader: window indexing across shards, the seeded per-epoch permutation, batches and resumable state.
// The permutation comes from a self-contained splitmix64 stream and Lemire's bounded draw, so the batches a
// seed produces are the same on every platform and standard library, which exact resumption relies on.
#include "ds/data/data_loader.h"

#include <algorithm>
#include <limits>
#include <utility>
#include <nlohmann/json.hpp>

#include "ds/core/error.h"
#include "ds/core/json_input.h"
#include "ds/core/log.h"

namespace ds::data {

// Note [Loader windows]
// Shard s with n_s tokens holds (n_s - 1) / T windows; window i starts at token i*T and spans T+1 tokens, so
// consecutive windows share one token and every token but a shard's last few is a target exactly once. Windows
// are numbered across shards in the order the shards were given. An epoch is an order over all windows
// (identity without shuffle); global batch g takes epoch positions [g*world*B, (g+1)*world*B) and rank r the
// positions g*world*B + r*B + [0, B). Hence the B*world rows of a world-1 loader with batch B*world are exactly
// the concatenation of the ranks' batches, and without shuffle B consecutive windows are llm.c's contiguous
// B*T+1 token chunk.

namespace {

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in [0, bound), Lemire's multiply-and-reject.
uint64_t bounded(uint64_t& state, uint64_t bound) {
  unsigned __int128 m = static_cast<unsigned __int128>(splitmix64(state)) * bound;
  auto low = static_cast<uint64_t>(m);
  if (low < bound) {
    const uint64_t threshold = (0 - bound) % bound;
    while (low < threshold) {
      m = static_cast<unsigned __int128>(splitmix64(state)) * bound;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

}  // namespace

DataLoader::DataLoader(const std::vector<std::string>& shard_paths, int B, int T, int rank, int world,
                       uint64_t seed, bool shuffle)
    : B_(B), T_(T), rank_(rank), world_(world), seed_(seed), shuffle_(shuffle) {
  DS_CHECK_AS(ConfigError, !shard_paths.empty(), "[data_loader] no token shards given; pass at least one .bin file");
  DS_CHECK_AS(ConfigError, B > 0 && T > 0, "[data_loader] B and T must be positive, found B={} T={}", B, T);
  DS_CHECK_AS(ConfigError, world > 0 && rank >= 0 && rank < world,
              "[data_loader] rank {} is outside a data-parallel world of {}; expected 0 <= rank < world", rank, world);
  window_offsets_.push_back(0);
  for (const auto& path : shard_paths) {
    shards_.emplace_back(path);
    const auto n = static_cast<int64_t>(shards_.back().size());
    num_tokens_ += n;
    const int64_t windows = n > 0 ? (n - 1) / T : 0;
    window_offsets_.push_back(window_offsets_.back() + windows);
  }
  num_windows_ = window_offsets_.back();
  const int64_t global = static_cast<int64_t>(B) * world;
  DS_CHECK_AS(ConfigError, num_windows_ >= global,
              "[data_loader] {} shard(s) hold {} tokens, which give {} windows of T+1={} tokens; one global batch "
              "needs {} windows (B={} x world={}), i.e. at least {} tokens in a single shard. Use a smaller B or T, "
              "or more data (first shard: '{}')",
              shards_.size(), num_tokens_, num_windows_, T + 1, global, B, world, global * T + 1, shard_paths[0]);
  DS_CHECK_AS(ConfigError, num_windows_ <= std::numeric_limits<uint32_t>::max(),
              "[data_loader] {} windows exceed the loader's limit of 2^32; use a larger T", num_windows_);
  batches_per_epoch_ = num_windows_ / global;
  start_epoch();
}

void DataLoader::start_epoch() {
  if (!shuffle_) {
    permutation_.clear();
    return;
  }
  permutation_.resize(static_cast<size_t>(num_windows_));
  for (size_t i = 0; i < permutation_.size(); ++i) permutation_[i] = static_cast<uint32_t>(i);
  // Mix seed and epoch (not seed + epoch, which would make seed s+1 replay seed s one epoch later).
  uint64_t state = seed_ * 0x9E3779B97F4A7C15ull ^ (static_cast<uint64_t>(epoch_) + 0xD1B54A32D192ED03ull) * 0xBF58476D1CE4E5B9ull;
  for (size_t i = permutation_.size() - 1; i > 0; --i) {
    const auto j = static_cast<size_t>(bounded(state, i + 1));
    std::swap(permutation_[i], permutation_[j]);
  }
}

int64_t DataLoader::window_at(int64_t position) const {
  return shuffle_ ? static_cast<int64_t>(permutation_[static_cast<size_t>(position)]) : position;
}

void DataLoader::copy_window(int64_t window, int32_t* inputs, int32_t* targets) const {
  const auto it = std::upper_bound(window_offsets_.begin(), window_offsets_.end(), window);
  const auto s = static_cast<size_t>(it - window_offsets_.begin() - 1);
  const auto tokens = shards_[s].tokens();
  const size_t start = static_cast<size_t>(window - window_offsets_[s]) * static_cast<size_t>(T_);
  DS_ASSERT(start + static_cast<size_t>(T_) + 1 <= tokens.size(), "window {} overruns shard {}", window, s);
  const uint16_t* w = tokens.data() + start;
  for (int t = 0; t < T_; ++t) {
    inputs[t] = w[t];
    targets[t] = w[t + 1];
  }
}

void DataLoader::next_batch(int32_t* inputs, int32_t* targets) {
  const int64_t first = (batch_ * world_ + rank_) * static_cast<int64_t>(B_);
  for (int b = 0; b < B_; ++b) {
    const size_t row = static_cast<size_t>(b) * static_cast<size_t>(T_);
    copy_window(window_at(first + b), inputs + row, targets + row);
  }
  if (++batch_ == batches_per_epoch_) {
    ++epoch_;
    batch_ = 0;
    start_epoch();
  }
}

void DataLoader::reset() {
  const bool rebuild = epoch_ != 0;
  epoch_ = 0;
  batch_ = 0;
  if (rebuild) start_epoch();
}

LoaderState DataLoader::state() const {
  return LoaderState{seed_, epoch_, batch_, B_, T_, world_, num_windows_, shuffle_};
}

void DataLoader::restore(const LoaderState& s) {
  DS_CHECK_AS(ConfigError, s.T == T_,
              "[data_loader] saved state has T={}, this loader T={}; resume with the same sequence length", s.T, T_);
  DS_CHECK_AS(ConfigError, s.num_windows == num_windows_,
              "[data_loader] saved state covers {} windows, these shards give {}; resume on the same token shards",
              s.num_windows, num_windows_);
  DS_CHECK_AS(ConfigError, s.shuffle == shuffle_,
              "[data_loader] saved state has shuffle={}, this loader shuffle={}; resume with the same setting",
              s.shuffle, shuffle_);
  DS_CHECK_AS(ConfigError, s.B > 0 && s.world > 0 && s.epoch >= 0 && s.batch_in_epoch >= 0,
              "[data_loader] saved state is invalid (B={} world={} epoch={} batch={})", s.B, s.world, s.epoch,
              s.batch_in_epoch);
  const int64_t consumed = s.batch_in_epoch * s.B * s.world;
  const int64_t global = static_cast<int64_t>(B_) * world_;
  DS_CHECK_AS(ConfigError, consumed % global == 0 && consumed / global < batches_per_epoch_,
              "[data_loader] saved state consumed {} windows of epoch {} (B={} x world={}), which is not a whole "
              "number of this loader's global batches of {} windows inside one epoch of {} batches",
              consumed, s.epoch, s.B, s.world, global, batches_per_epoch_);
  if (shuffle_ && s.seed != seed_) {
    log_info("[data_loader] resuming with the saved seed {} instead of {}", s.seed, seed_);
  }
  seed_ = s.seed;
  epoch_ = s.epoch;
  batch_ = consumed / global;
  start_epoch();
}

std::string DataLoader::state_json() const {
  nlohmann::json j = state();
  return j.dump();
}

void DataLoader::restore_json(const std::string& json) {
  nlohmann::json j;
  const std::string problem = parse_json_bounded(json, JsonLimits{}, j);
  DS_CHECK_AS(ConfigError, problem.empty(), "[data_loader] loader state is not valid JSON ({}); expected the text "
              "of state_json()", problem);
  restore(j.get<LoaderState>());
}

void to_json(nlohmann::json& j, const LoaderState& s) {
  j = nlohmann::json{{"seed", s.seed},   {"epoch", s.epoch}, {"batch_in_epoch", s.batch_in_epoch},
                     {"B", s.B},         {"T", s.T},         {"world", s.world},
                     {"num_windows", s.num_windows},         {"shuffle", s.shuffle}};
}

void from_json(const nlohmann::json& j, LoaderState& s) {
  auto fail = [&](const char* key) {
    return ConfigError(fmt::format("[data_loader] loader state {} has no valid '{}'; expected the integers seed, "
                                   "epoch, batch_in_epoch, B, T, world, num_windows and the boolean shuffle",
                                   json_excerpt(j), key));
  };
  auto integer = [&](const char* key, auto& dst) {
    using T = std::remove_reference_t<decltype(dst)>;
    const std::optional<T> v = j.is_object() && j.contains(key) ? json_integer<T>(j[key]) : std::nullopt;
    if (!v) throw fail(key);
    dst = *v;
  };
  integer("seed", s.seed);
  integer("epoch", s.epoch);
  integer("batch_in_epoch", s.batch_in_epoch);
  integer("B", s.B);
  integer("T", s.T);
  integer("world", s.world);
  integer("num_windows", s.num_windows);
  if (!j.contains("shuffle") || !j["shuffle"].is_boolean()) throw fail("shuffle");
  s.shuffle = j["shuffle"].get<bool>();
}

}  // namespace ds::data
