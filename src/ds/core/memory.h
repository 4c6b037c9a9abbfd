// Memory accounting and allocation. Every byte the library allocates goes through allocate_storage(), which
// reports to the calling rank's MemoryTracker: tier (device/host/nvme) x category, current and peak. A tier may
// have a limit; crossing it throws OutOfMemory naming tier, category, request and peak. On the CPU backend the
// device tier is the memory the model computes in, so a limit there emulates a smaller accelerator.
// Ranks may be threads (local backend), so the tracker in use is a thread-local pointer set by TrackerScope.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "ds/core/device.h"

namespace ds {

enum class Tier : uint8_t { device, host, nvme };
enum class Category : uint8_t { param, grad, optimizer, activation, comm_buffer, kv_cache, workspace };
constexpr int kTierCount = 3;
constexpr int kCategoryCount = 7;

std::string_view tier_name(Tier t);
std::string_view category_name(Category c);

class MemoryTracker {
 public:
  // Records an allocation; throws OutOfMemory (recording nothing) if it would cross the tier's limit.
  void on_alloc(Tier tier, Category cat, int64_t bytes);
  void on_free(Tier tier, Category cat, int64_t bytes);

  int64_t current(Tier tier, Category cat) const;
  int64_t peak(Tier tier, Category cat) const;
  int64_t current(Tier tier) const;  // all categories
  int64_t peak(Tier tier) const;     // peak of the tier total (not the sum of category peaks)

  void set_limit(Tier tier, std::optional<int64_t> bytes);
  std::optional<int64_t> limit(Tier tier) const;
  void reset_peaks();
  // One line per non-empty tier: "device: current 1.2 GiB, peak 1.5 GiB (param 0.5, grad 0.5, ...)".
  std::string report() const;

 private:
  mutable std::mutex mutex_;
  std::array<std::array<int64_t, kCategoryCount>, kTierCount> current_{};
  std::array<std::array<int64_t, kCategoryCount>, kTierCount> peak_{};
  std::array<int64_t, kTierCount> tier_current_{};
  std::array<int64_t, kTierCount> tier_peak_{};
  std::array<std::optional<int64_t>, kTierCount> limit_{};
};

// The tracker allocations on this thread report to: the one set by the innermost TrackerScope, else a
// process-wide default.
MemoryTracker& current_tracker();

class TrackerScope {
 public:
  explicit TrackerScope(MemoryTracker& tracker);
  ~TrackerScope();
  TrackerScope(const TrackerScope&) = delete;
  TrackerScope& operator=(const TrackerScope&) = delete;

 private:
  MemoryTracker* previous_;
};

// A block of memory owned by one Tensor family. Freed and un-reported in its destructor (which never throws).
class Storage {
 public:
  Storage(void* data, int64_t bytes, Device device, Tier tier, Category cat, MemoryTracker* tracker);
  // Memory owned elsewhere (Tensor::borrow): neither freed nor tracked.
  static std::shared_ptr<Storage> borrowed(void* data, int64_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  int64_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  Tier tier() const { return tier_; }
  Category category() const { return category_; }

 private:
  void* data_;
  int64_t bytes_;
  Device device_;
  Tier tier_;
  Category category_;
  MemoryTracker* tracker_;
  bool owned_ = true;
};

// Allocates `bytes` (`alignment`-byte aligned, at least 64; 2 MiB aligned with transparent huge pages for blocks of
// 2 MiB or more, since first-touch page faults are expensive here). Memory is not initialised. A host block for
// O_DIRECT I/O asks for the page size (offload/aio.h).
std::shared_ptr<Storage> allocate_storage(int64_t bytes, Category cat, Tier tier = Tier::device,
                                          Device device = Device::cpu(), size_t alignment = 64);

// "1.50 GiB", "12.0 MiB", "512 B"
std::string format_bytes(int64_t bytes);

}  // namespace ds
