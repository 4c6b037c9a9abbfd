// Pieces both communicator backends share (comm-internal): the Work handle a worker thread completes, and a
// grow-only staging buffer accounted as host-tier comm_buffer memory.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <exception>
#include <memory>
#include <mutex>

#include "ds/comm/communicator.h"
#include "ds/core/memory.h"

namespace ds::comm_detail {

// Completed once by the thread that ran the collective; wait() rethrows its error.
class Completion final : public Work {
 public:
  void finish(std::exception_ptr error) {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    error_ = std::move(error);
    cv_.notify_all();
  }
  void wait() override {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_; });
    if (error_) std::rethrow_exception(error_);
  }
  bool test() override {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
};

// A grow-only buffer for staging copies, allocated through the memory tracker (host tier, comm_buffer).
class GrowBuffer {
 public:
  std::byte* reserve(size_t bytes) {
    if (bytes == 0) return storage_ ? static_cast<std::byte*>(storage_->data()) : nullptr;
    if (!storage_ || storage_->bytes() < static_cast<int64_t>(bytes)) {
      storage_.reset();  // release first: the peak is the new size, not old + new
      storage_ = allocate_storage(static_cast<int64_t>(bytes), Category::comm_buffer, Tier::host);
    }
    return static_cast<std::byte*>(storage_->data());
  }

 private:
  std::shared_ptr<Storage> storage_;
};

}  // namespace ds::comm_detail
