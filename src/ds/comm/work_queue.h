// The worker thread that runs asynchronous collectives (comm-internal), one definition for both backends: the
// local backend gives each communicator a queue, the MPI backend has one for the process, which makes every MPI
// call. Tasks run one at a time in submission order (completion in issue order, like one NCCL stream), each under
// the memory tracker of the thread that submitted it, so a rank's staging buffers count for that rank. A deferred
// task starts an operation that finishes later (an MPI_Isend): the queue then calls its poll hook after every
// task and, when it has nothing else to do, polls with a back-off of up to 1 ms.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "ds/comm/backend_util.h"

namespace ds::comm::detail {

class WorkQueue {
 public:
  struct Hooks {
    std::function<void()> on_start;   // first thing the thread does (MPI_Init_thread, the log prefix)
    std::function<void()> on_exit;    // last thing it does (MPI_Finalize)
    std::function<bool()> poll;       // finishes completed deferred operations; true if any finished
    std::function<bool()> pending;    // true while deferred operations are outstanding
  };
  // `stopped_message` is the CommError a submit after stop() throws.
  explicit WorkQueue(Hooks hooks = {}, std::string stopped_message = "[comm] work submitted after shutdown");
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // Starts the thread now and returns once on_start has run (otherwise the first submit starts it).
  void start();
  // The Work completes when `task` returns; an exception from it is rethrown by Work::wait().
  WorkPtr submit(std::function<void()> task);
  // `task` starts an operation and keeps the completion, which the poll hook finishes later.
  WorkPtr submit_deferred(std::function<void(std::shared_ptr<Completion>)> task);
  // Blocks until every submitted task has run (deferred operations may still be outstanding).
  void drain();
  bool stopping() const;
  // Runs what is queued, keeps polling outstanding deferred operations for up to `grace`, runs on_exit and joins.
  // False when the thread is still busy after `timeout` (a collective whose peers died): it is then detached and
  // this queue must be leaked, never destroyed.
  bool stop(std::chrono::milliseconds timeout = std::chrono::milliseconds::max(),
            std::chrono::milliseconds grace = std::chrono::seconds(10));

 private:
  struct Task {
    std::function<void()> run;                                // completes the work when it returns
    std::function<void(std::shared_ptr<Completion>)> start;   // or: starts a deferred operation
    std::shared_ptr<Completion> work;
  };
  WorkPtr enqueue(Task task);
  void spawn_locked();
  void loop();
  bool has_pending() const { return hooks_.pending && hooks_.pending(); }

  const Hooks hooks_;
  const std::string stopped_message_;
  mutable std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<Task> tasks_;
  bool started_ = false, stopping_ = false, exited_ = false, busy_ = false;
  std::chrono::milliseconds grace_{0};
  std::thread thread_;
};

}  // namespace ds::comm::detail
