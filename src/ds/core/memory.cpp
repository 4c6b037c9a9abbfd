// MemoryTracker bookkeeping and the CPU/CUDA allocators behind allocate_storage().
#include "ds/core/memory.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "ds/core/error.h"

namespace ds {

std::string_view tier_name(Tier t) {
  switch (t) {
    case Tier::device: return "device";
    case Tier::host: return "host";
    case Tier::nvme: return "nvme";
  }
  return "?";
}

std::string_view category_name(Category c) {
  switch (c) {
    case Category::param: return "param";
    case Category::grad: return "grad";
    case Category::optimizer: return "optimizer";
    case Category::activation: return "activation";
    case Category::comm_buffer: return "comm_buffer";
    case Category::kv_cache: return "kv_cache";
    case Category::workspace: return "workspace";
  }
  return "?";
}

std::string format_bytes(int64_t bytes) {
  double b = static_cast<double>(bytes);
  if (bytes >= (int64_t(1) << 30)) return fmt::format("{:.2f} GiB", b / (1 << 30));
  if (bytes >= (int64_t(1) << 20)) return fmt::format("{:.1f} MiB", b / (1 << 20));
  if (bytes >= (int64_t(1) << 10)) return fmt::format("{:.1f} KiB", b / (1 << 10));
  return fmt::format("{} B", bytes);
}

void MemoryTracker::on_alloc(Tier tier, Category cat, int64_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  const int t = static_cast<int>(tier), c = static_cast<int>(cat);
  const auto& lim = limit_[t];
  if (lim && tier_current_[t] + bytes > *lim) {
    throw OutOfMemory(fmt::format(
        "[memory] out of {} memory: a {} allocation of {} would bring the tier to {}, over its limit of {} "
        "(in use {}, peak so far {}); use a smaller model or batch, enable ZeRO/offload, or raise the limit",
        tier_name(tier), category_name(cat), format_bytes(bytes), format_bytes(tier_current_[t] + bytes),
        format_bytes(*lim), format_bytes(tier_current_[t]), format_bytes(tier_peak_[t])));
  }
  current_[t][c] += bytes;
  if (current_[t][c] > peak_[t][c]) peak_[t][c] = current_[t][c];
  tier_current_[t] += bytes;
  if (tier_current_[t] > tier_peak_[t]) tier_peak_[t] = tier_current_[t];
}

void MemoryTracker::on_free(Tier tier, Category cat, int64_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  const int t = static_cast<int>(tier), c = static_cast<int>(cat);
  current_[t][c] -= bytes;
  tier_current_[t] -= bytes;
}

int64_t MemoryTracker::current(Tier tier, Category cat) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return current_[static_cast<int>(tier)][static_cast<int>(cat)];
}
int64_t MemoryTracker::peak(Tier tier, Category cat) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return peak_[static_cast<int>(tier)][static_cast<int>(cat)];
}
int64_t MemoryTracker::current(Tier tier) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return tier_current_[static_cast<int>(tier)];
}
int64_t MemoryTracker::peak(Tier tier) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return tier_peak_[static_cast<int>(tier)];
}

void MemoryTracker::set_limit(Tier tier, std::optional<int64_t> bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  limit_[static_cast<int>(tier)] = bytes;
}
std::optional<int64_t> MemoryTracker::limit(Tier tier) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return limit_[static_cast<int>(tier)];
}

void MemoryTracker::reset_peaks() {
  std::lock_guard<std::mutex> lock(mutex_);
  peak_ = current_;
  tier_peak_ = tier_current_;
}

std::string MemoryTracker::report() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string out;
  for (int t = 0; t < kTierCount; ++t) {
    if (tier_peak_[t] == 0) continue;
    std::string cats;
    for (int c = 0; c < kCategoryCount; ++c) {
      if (peak_[t][c] == 0) continue;
      if (!cats.empty()) cats += ", ";
      cats += fmt::format("{} {}", category_name(static_cast<Category>(c)), format_bytes(peak_[t][c]));
    }
    out += fmt::format("{}: current {}, peak {} (category peaks: {})\n", tier_name(static_cast<Tier>(t)),
                       format_bytes(tier_current_[t]), format_bytes(tier_peak_[t]), cats);
  }
  return out;
}

namespace {
MemoryTracker g_default_tracker;
thread_local MemoryTracker* t_tracker = nullptr;
constexpr int64_t kHugePage = int64_t(2) << 20;
}  // namespace

MemoryTracker& current_tracker() { return t_tracker ? *t_tracker : g_default_tracker; }

TrackerScope::TrackerScope(MemoryTracker& tracker) : previous_(t_tracker) { t_tracker = &tracker; }
TrackerScope::~TrackerScope() { t_tracker = previous_; }

Storage::Storage(void* data, int64_t bytes, Device device, Tier tier, Category cat, MemoryTracker* tracker)
    : data_(data), bytes_(bytes), device_(device), tier_(tier), category_(cat), tracker_(tracker) {}

namespace {
// Note [Large host blocks]
// Blocks of 2 MiB or more are mapped directly (2 MiB aligned, transparent huge pages) rather than taken from
// malloc: freeing one returns its pages to the system at once, so a process's resident size follows what it
// holds (an arena folding its first-pass chunks into one, a released gather buffer) instead of the high-water
// mark of a fragmented heap, and malloc settings (MALLOC_MMAP_MAX_=0, which MPI jobs use) do not change it.
int64_t mapped_bytes(int64_t bytes) { return (bytes + kHugePage - 1) / kHugePage * kHugePage; }

void* map_block(int64_t bytes) {
  const auto size = static_cast<size_t>(mapped_bytes(bytes));
  const size_t over = size + static_cast<size_t>(kHugePage);
  void* raw = mmap(nullptr, over, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + static_cast<uintptr_t>(kHugePage) - 1) & ~(static_cast<uintptr_t>(kHugePage) - 1);
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t end = start + over, used_end = aligned + size;
  if (end > used_end) munmap(reinterpret_cast<void*>(used_end), end - used_end);
  madvise(reinterpret_cast<void*>(aligned), size, MADV_HUGEPAGE);
  return reinterpret_cast<void*>(aligned);
}
}  // namespace

std::shared_ptr<Storage> Storage::borrowed(void* data, int64_t bytes, Device device) {
  auto s = std::make_shared<Storage>(data, bytes, device, Tier::device, Category::workspace, nullptr);
  s->owned_ = false;
  return s;
}

Storage::~Storage() {
  if (!owned_) return;
  if (device_.is_cpu()) {
    if (bytes_ >= kHugePage) {
      munmap(data_, static_cast<size_t>(mapped_bytes(bytes_)));
    } else {
      std::free(data_);
    }
  } else {
    cuda::free_device(data_);
  }
  if (tracker_) tracker_->on_free(tier_, category_, bytes_);
}

std::shared_ptr<Storage> allocate_storage(int64_t bytes, Category cat, Tier tier, Device device, size_t alignment) {
  DS_ASSERT(bytes >= 0, "negative allocation {}", bytes);
  alignment = std::max<size_t>(alignment, 64);
  DS_ASSERT((alignment & (alignment - 1)) == 0 && alignment <= static_cast<size_t>(kHugePage),
            "allocation alignment {} is not a power of two up to 2 MiB", alignment);
  MemoryTracker& tracker = current_tracker();
  tracker.on_alloc(tier, cat, bytes);  // throws before anything is allocated
  void* p = nullptr;
  if (device.is_cpu()) {
    if (bytes >= kHugePage) {
      p = map_block(bytes);  // Note [Large host blocks]
    } else {
      const size_t rounded = (static_cast<size_t>(bytes) + alignment - 1) / alignment * alignment;
      p = std::aligned_alloc(alignment, rounded == 0 ? alignment : rounded);
    }
    if (!p) {
      tracker.on_free(tier, cat, bytes);
      throw OutOfMemory(fmt::format("[memory] the system refused a {} allocation of {} ({} tier)",
                                    category_name(cat), format_bytes(bytes), tier_name(tier)));
    }
  } else {
    try {
      p = cuda::malloc_device(static_cast<size_t>(bytes));
    } catch (...) {
      tracker.on_free(tier, cat, bytes);
      throw;
    }
  }
  return std::make_shared<Storage>(p, bytes, device, tier, cat, &tracker);
}

}  // namespace ds
