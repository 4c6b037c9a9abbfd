// The worker queue (work_queue.h). The loop runs tasks while there are any; with none queued it sleeps, unless
// deferred operations are outstanding, which it polls (at once after a poll that made progress, then backing off
// from 16 us to 1 ms). Stopping lets the queue empty, then gives outstanding deferred operations `grace` to finish.
#include "ds/comm/work_queue.h"

#include <algorithm>
#include <exception>
#include <utility>

#include "ds/core/error.h"
#include "ds/core/memory.h"

namespace ds::comm::detail {

WorkQueue::WorkQueue(Hooks hooks, std::string stopped_message)
    : hooks_(std::move(hooks)), stopped_message_(std::move(stopped_message)) {}

WorkQueue::~WorkQueue() { stop(); }

void WorkQueue::spawn_locked() {
  if (!thread_.joinable() && !exited_) thread_ = std::thread([this] { loop(); });
}

void WorkQueue::start() {
  std::unique_lock<std::mutex> lock(mu_);
  spawn_locked();
  cv_.wait(lock, [&] { return started_; });
}

WorkPtr WorkQueue::submit(std::function<void()> task) {
  MemoryTracker* tracker = &current_tracker();
  return enqueue({[tracker, task = std::move(task)] {
                    TrackerScope scope(*tracker);
                    task();
                  },
                  nullptr, nullptr});
}

WorkPtr WorkQueue::submit_deferred(std::function<void(std::shared_ptr<Completion>)> task) {
  return enqueue({nullptr, std::move(task), nullptr});
}

WorkPtr WorkQueue::enqueue(Task task) {
  task.work = std::make_shared<Completion>();
  WorkPtr work = task.work;
  std::lock_guard<std::mutex> lock(mu_);
  DS_CHECK_AS(CommError, !stopping_, "{}", stopped_message_);
  spawn_locked();
  tasks_.push_back(std::move(task));
  cv_.notify_all();
  return work;
}

void WorkQueue::drain() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_cv_.wait(lock, [&] { return tasks_.empty() && !busy_; });
}

bool WorkQueue::stopping() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stopping_;
}

bool WorkQueue::stop(std::chrono::milliseconds timeout, std::chrono::milliseconds grace) {
  std::unique_lock<std::mutex> lock(mu_);
  stopping_ = true;
  grace_ = grace;
  cv_.notify_all();
  if (!thread_.joinable()) return true;
  const bool finished = timeout == std::chrono::milliseconds::max()
                            ? (cv_.wait(lock, [&] { return exited_; }), true)
                            : cv_.wait_for(lock, timeout, [&] { return exited_; });
  if (!finished) {
    thread_.detach();
    return false;
  }
  lock.unlock();
  thread_.join();
  return true;
}

void WorkQueue::loop() {
  if (hooks_.on_start) hooks_.on_start();
  std::unique_lock<std::mutex> lock(mu_);
  started_ = true;
  cv_.notify_all();
  int idle_polls = 0;
  auto deadline = std::chrono::steady_clock::time_point::max();
  while (true) {
    if (!tasks_.empty()) {
      Task task = std::move(tasks_.front());
      tasks_.pop_front();
      busy_ = true;
      lock.unlock();
      try {
        if (task.run) {
          task.run();
          task.work->finish(nullptr);
        } else {
          task.start(task.work);
        }
      } catch (...) {
        task.work->finish(std::current_exception());
      }
      if (has_pending()) hooks_.poll();
      lock.lock();
      busy_ = false;
      if (tasks_.empty()) idle_cv_.notify_all();
      idle_polls = 0;
      continue;
    }
    if (!has_pending()) {
      if (stopping_) break;
      cv_.wait(lock, [&] { return stopping_ || !tasks_.empty(); });
      continue;
    }
    if (stopping_) {  // only deferred operations left: give them the grace period
      const auto now = std::chrono::steady_clock::now();
      if (deadline == std::chrono::steady_clock::time_point::max()) deadline = now + grace_;
      if (now > deadline) break;
    }
    lock.unlock();
    const bool progressed = hooks_.poll();
    lock.lock();
    idle_polls = progressed ? 0 : idle_polls + 1;
    if (idle_polls > 64) {
      const auto pause = std::chrono::microseconds(std::min(1000, 16 << std::min(idle_polls - 64, 6)));
      cv_.wait_for(lock, pause, [&] { return !tasks_.empty(); });
    }
  }
  lock.unlock();
  if (hooks_.on_exit) hooks_.on_exit();
  lock.lock();
  exited_ = true;
  cv_.notify_all();
}

}  // namespace ds::comm::detail
