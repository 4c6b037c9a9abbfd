// Local backend: ranks are threads sharing one address space; collectives rendezvous in a shared LocalGroup.
// Protocol: every rank posts its buffers in its slot and arrives; the last arriver validates all slots (a
// mismatched call aborts the world); then each rank reads the others' buffers directly and a second rendezvous
// keeps every buffer alive until all readers are done. all_reduce folds ranks in order 0, 1, ..., W-1 per element,
// each rank folding its 1/W share into its own grow-only buffer (reported as host comm_buffer memory), which all
// then copy from, so the bits never depend on timing. Aborts, timeouts and departed ranks wake every waiter.
#include "ds/comm/local/local_comm.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <thread>
#include <tuple>

#include "ds/comm/backend_util.h"
#include "ds/comm/fold.h"
#include "ds/comm/work_queue.h"
#include "ds/core/error.h"
#include "ds/core/log.h"
#include "ds/core/memory.h"

namespace ds::comm {
namespace {

using comm::detail::GrowBuffer;
using comm::detail::overlaps;
using comm::detail::RingSplit;
using comm::detail::WorkQueue;

using Clock = std::chrono::steady_clock;

// ----------------------------------------------------------------------------------------------------------------
// Shared state: the job (one per make_local_world) and its groups (the world and every split of it).

struct LocalGroup;

struct LocalJob {
  LocalJob(int world_size, const LocalWorldOptions& o) : world(world_size), options(o), departed(world_size, 0) {}

  // The first abort wins; its message is what every waiter throws.
  void abort(const std::string& message) {
    std::vector<std::weak_ptr<LocalGroup>> to_wake;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (aborted.load()) return;
      abort_message = message;
      aborted.store(true);
      to_wake = groups;
    }
    wake(to_wake);
  }
  std::string message() {
    std::lock_guard<std::mutex> lock(mu);
    return abort_message;
  }
  void depart(int world_rank) {
    std::vector<std::weak_ptr<LocalGroup>> to_wake;
    {
      std::lock_guard<std::mutex> lock(mu);
      departed[world_rank] = 1;
      departed_count.fetch_add(1);
      to_wake = groups;
    }
    wake(to_wake);
  }
  bool has_departed(int world_rank) {
    std::lock_guard<std::mutex> lock(mu);
    return departed[world_rank] != 0;
  }
  void add_group(const std::shared_ptr<LocalGroup>& g) {
    std::lock_guard<std::mutex> lock(mu);
    std::erase_if(groups, [](const std::weak_ptr<LocalGroup>& w) { return w.expired(); });
    groups.push_back(g);
  }
  static void wake(const std::vector<std::weak_ptr<LocalGroup>>& groups);

  const int world;
  const LocalWorldOptions options;
  std::atomic<bool> aborted{false};
  std::atomic<int> departed_count{0};
  std::mutex mu;  // guards everything below; taken after a group's mutex, never before
  std::string abort_message;
  std::vector<std::weak_ptr<LocalGroup>> groups;
  std::vector<char> departed;  // by world rank: returned from run_local_world's function
};

enum class Step : uint8_t { all_reduce, reduce_scatter, all_gather, broadcast, all_to_all, barrier, split };

std::string_view step_name(Step s) {
  switch (s) {
    case Step::all_reduce: return "all_reduce";
    case Step::reduce_scatter: return "reduce_scatter";
    case Step::all_gather: return "all_gather";
    case Step::broadcast: return "broadcast";
    case Step::all_to_all: return "all_to_all_v";
    case Step::barrier: return "barrier";
    case Step::split: return "split";
  }
  return "?";
}

std::string_view op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::max: return "max";
    case ReduceOp::min: return "min";
  }
  return "?";
}

// What one rank posted for the current collective. Pointers stay valid until the collective's last rendezvous.
struct Slot {
  Step step = Step::barrier;
  const std::byte* send = nullptr;
  std::byte* recv = nullptr;
  size_t count = 0;
  DType dtype = DType::f32;
  ReduceOp op = ReduceOp::sum;
  int root = 0;
  const std::vector<size_t>* send_counts = nullptr;
  const std::vector<size_t>* recv_counts = nullptr;
  int color = 0, key = 0;
};

std::string describe(const Slot& s) {
  switch (s.step) {
    case Step::all_reduce:
    case Step::reduce_scatter:
      return fmt::format("{}(count {}, {}, {})", step_name(s.step), s.count, dtype_name(s.dtype), op_name(s.op));
    case Step::all_gather: return fmt::format("all_gather(count {}, {})", s.count, dtype_name(s.dtype));
    case Step::broadcast:
      return fmt::format("broadcast(count {}, {}, root {})", s.count, dtype_name(s.dtype), s.root);
    case Step::all_to_all: return fmt::format("all_to_all_v({})", dtype_name(s.dtype));
    case Step::barrier: return "barrier()";
    case Step::split: return "split()";
  }
  return "?";
}

std::string join_ints(const std::vector<int>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out;
}

// A point-to-point operation waiting in a mailbox; it is its own Work handle.
struct P2POp;

struct LocalGroup {
  LocalGroup(std::shared_ptr<LocalJob> j, std::vector<int> members)
      : job(std::move(j)),
        size(static_cast<int>(members.size())),
        world_ranks(std::move(members)),
        present(size, 0),
        slots(size),
        share_buffers(size),
        shares(size, nullptr),
        split_groups(size),
        split_ranks(size, -1) {}

  // Returns once all members have arrived. The last to arrive runs `on_last` under the lock; an exception from
  // it (a mismatched call) aborts the world, and every rank then throws its message as a CommError.
  template <typename F>
  void rendezvous(int rank, Step step, F&& on_last) {
    std::unique_lock<std::mutex> lock(mu);
    throw_if_aborted(lock);
    const uint64_t gen = generation;
    present[rank] = 1;
    if (++arrived == size) {
      try {
        on_last();
      } catch (const std::exception& e) {
        fail(lock, e.what());
      }
      arrived = 0;
      std::fill(present.begin(), present.end(), 0);
      ++generation;
      cv.notify_all();
      return;
    }
    wait(lock, [&] { return generation != gen; }, step_name(step), [&] {
      std::vector<int> missing;
      for (int r = 0; r < size; ++r)
        if (!present[r]) missing.push_back(r);
      return missing;
    });
  }
  void rendezvous(int rank, Step step) {
    rendezvous(rank, step, [] {});
  }

  // Waits on `cv` until done(); throws CommError on abort, on timeout (aborting the world) and when a rank this
  // wait needs (from missing(), group ranks) has left run_local_world's function.
  template <typename Done, typename Missing>
  void wait(std::unique_lock<std::mutex>& lock, Done&& done, std::string_view what, Missing&& missing) {
    const double timeout_s = job->options.timeout_s;
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(timeout_s > 0 ? timeout_s : 0));
    while (!done()) {
      throw_if_aborted(lock);
      if (job->departed_count.load() > 0) {
        for (int r : missing()) {
          if (job->has_departed(world_ranks[r])) {
            fail(lock, fmt::format("[comm] rank {} returned while {} still waits for it in {}", name_ranks({r}),
                                   waiter_name(), what));
          }
        }
      }
      if (timeout_s > 0) {
        if (cv.wait_until(lock, deadline) == std::cv_status::timeout && !done() && !job->aborted.load()) {
          fail(lock, fmt::format("[comm] {} timed out after {} s in a local world of {}: still waiting for rank(s) {}",
                                 what, timeout_s, size, name_ranks(missing())));
        }
      } else {
        cv.wait(lock);
      }
    }
  }

  void throw_if_aborted(std::unique_lock<std::mutex>& lock) {
    if (!job->aborted.load()) return;
    lock.unlock();
    throw CommError(job->message());
  }
  [[noreturn]] void fail(std::unique_lock<std::mutex>& lock, const std::string& msg) {
    lock.unlock();
    job->abort(msg);
    throw CommError(job->message());
  }
  // "2, 3", with world ranks added when this group is a split of the world.
  std::string name_ranks(const std::vector<int>& ranks) const {
    std::vector<int> world;
    bool same = true;
    for (int r : ranks) {
      world.push_back(world_ranks[r]);
      same = same && world_ranks[r] == r;
    }
    if (same) return join_ints(ranks);
    return fmt::format("{} (world rank(s) {})", join_ints(ranks), join_ints(world));
  }
  std::string waiter_name() const { return size == job->world ? "the world" : "a sub-communicator"; }

  const std::shared_ptr<LocalJob> job;
  const int size;
  const std::vector<int> world_ranks;  // group rank -> world rank

  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  uint64_t generation = 0;
  std::vector<char> present;
  std::vector<Slot> slots;
  // all_reduce: rank r's reduced share. Grown and written by r after the first rendezvous of an all_reduce, read by
  // all after the second and until they arrive at their next collective (so r never moves it while others read).
  // Owned by the group, not the communicator: a rank may destroy its communicator while others still copy.
  std::vector<GrowBuffer> share_buffers;
  std::vector<const std::byte*> shares;
  // split: each rank's new group and rank in it, filled by the last arriver; each rank reads (and clears) its own.
  std::vector<std::shared_ptr<LocalGroup>> split_groups;
  std::vector<int> split_ranks;

  using P2PKey = std::tuple<int, int, int>;  // (source, destination, tag) in group ranks
  std::map<P2PKey, std::deque<std::shared_ptr<P2POp>>> sends, recvs;
};

void LocalJob::wake(const std::vector<std::weak_ptr<LocalGroup>>& groups) {
  for (const auto& w : groups) {
    if (auto g = w.lock()) {
      std::lock_guard<std::mutex> lock(g->mu);
      g->cv.notify_all();
    }
  }
}

// The mailbox keeps an unmatched op alive (a send whose handle was dropped is still delivered); the op refers to
// its group weakly, so an op that is never matched does not keep the group alive in a cycle.
struct P2POp final : public Work {
  std::weak_ptr<LocalGroup> group;
  bool is_send = false;
  int self = 0, peer = 0, tag = 0;
  const std::byte* src = nullptr;
  std::byte* dst = nullptr;
  size_t count = 0;
  DType dtype = DType::f32;
  bool done = false;     // guarded by group->mu
  std::string error;     // set with done when the two sides disagree

  void wait() override {
    const std::string what = fmt::format("{} rank {} (tag {})", is_send ? "send to" : "recv from", peer, tag);
    auto g = group.lock();
    if (!g) {  // every communicator of the group is gone: nobody can complete the op any more
      DS_CHECK_AS(CommError, done, "[comm] {} was never matched before its communicators were destroyed", what);
    } else {
      std::unique_lock<std::mutex> lock(g->mu);
      g->wait(lock, [&] { return done; }, what, [&] { return std::vector<int>{peer}; });
    }
    if (!error.empty()) throw CommError(error);
  }
  bool test() override {
    auto g = group.lock();
    if (!g) return true;
    std::lock_guard<std::mutex> lock(g->mu);
    return done;
  }
};

// Completes a matched send/recv pair of `group`; called with the group's mutex held.
void complete_pair(LocalGroup& group, P2POp& send, P2POp& recv) {
  if (send.count != recv.count || send.dtype != recv.dtype) {
    const std::string msg = fmt::format(
        "[comm] rank {} sent {} {} elements to rank {} (tag {}) but the matching recv expects {} {} elements",
        send.self, send.count, dtype_name(send.dtype), recv.self, send.tag, recv.count, dtype_name(recv.dtype));
    send.error = msg;
    recv.error = msg;
  } else if (send.count > 0 && send.src != recv.dst) {
    std::memcpy(recv.dst, send.src, send.count * dtype_size(send.dtype));
  }
  send.done = true;
  recv.done = true;
  group.cv.notify_all();
}

// ----------------------------------------------------------------------------------------------------------------

class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator(std::shared_ptr<LocalGroup> group, int rank)
      : group_(std::move(group)),
        rank_(rank),
        world_rank_(group_->world_ranks[rank]),
        srcs_(group_->size),
        worker_(worker_hooks(world_rank_, group_->job->world)) {}
  ~LocalCommunicator() override { worker_.stop(); }

  int rank() const override { return rank_; }
  int size() const override { return group_->size; }
  std::string backend() const override { return "local"; }

  std::unique_ptr<Communicator> split(int color, int key) override {
    std::unique_ptr<Communicator> result;
    worker_.submit([&, this] { result = do_split(color, key); })->wait();
    return result;
  }
  void abort(const std::string& reason) noexcept override {
    try {
      group_->job->abort(fmt::format("[comm] rank {} aborted: {}", world_rank_, reason));
    } catch (...) {
      group_->job->aborted.store(true);  // formatting failed (out of memory): waiters still wake on the flag
    }
  }

  // Ends the world after a failure in the middle of a collective (the peers could never finish it).
  [[noreturn]] void abort_world(const std::string& message) {
    group_->job->abort(message);
    throw CommError(group_->job->message());
  }

  // run_local_world: this rank's function returned; once its queued work is done it takes part in nothing more.
  void depart() {
    worker_.drain();
    group_->job->depart(world_rank_);
  }

 protected:
  // The worker thread's log lines carry this rank's prefix.
  static WorkQueue::Hooks worker_hooks(int world_rank, int world) {
    WorkQueue::Hooks hooks;
    hooks.on_start = [world_rank, world] { set_log_rank(world_rank, world); };
    return hooks;
  }

  // Collectives run on this communicator's worker queue, in issue order; point-to-point is matched at once.
  WorkPtr do_all_reduce(void* data, size_t count, DType dtype, ReduceOp op) override {
    return worker_.submit([=, this] { run_all_reduce(static_cast<std::byte*>(data), count, dtype, op); });
  }
  WorkPtr do_reduce_scatter(const void* send, void* recv, size_t count, DType dtype, ReduceOp op) override {
    return worker_.submit([=, this] {
      run_reduce_scatter(static_cast<const std::byte*>(send), static_cast<std::byte*>(recv), count, dtype, op);
    });
  }
  WorkPtr do_all_gather(const void* send, void* recv, size_t count, DType dtype) override {
    return worker_.submit([=, this] {
      run_all_gather(static_cast<const std::byte*>(send), static_cast<std::byte*>(recv), count, dtype);
    });
  }
  WorkPtr do_broadcast(void* data, size_t count, DType dtype, int root) override {
    return worker_.submit([=, this] { run_broadcast(static_cast<std::byte*>(data), count, dtype, root); });
  }
  WorkPtr do_all_to_all_v(const void* send, const std::vector<size_t>& send_counts, void* recv,
                          const std::vector<size_t>& recv_counts, DType dtype) override {
    return worker_.submit([=, this] {
      run_all_to_all_v(static_cast<const std::byte*>(send), send_counts, static_cast<std::byte*>(recv), recv_counts,
                       dtype);
    });
  }
  WorkPtr do_send(const void* data, size_t count, DType dtype, int peer, int tag) override {
    auto op = make_p2p(true, peer, tag, count, dtype);
    op->src = static_cast<const std::byte*>(data);
    post(op, /*mine=*/group_->sends, /*theirs=*/group_->recvs, {rank_, peer, tag});
    return op;
  }
  WorkPtr do_recv(void* data, size_t count, DType dtype, int peer, int tag) override {
    auto op = make_p2p(false, peer, tag, count, dtype);
    op->dst = static_cast<std::byte*>(data);
    post(op, group_->recvs, group_->sends, {peer, rank_, tag});
    return op;
  }
  WorkPtr do_barrier() override {
    return worker_.submit([this] { group_->rendezvous(rank_, Step::barrier, [this] { validate(Step::barrier); }); });
  }

 private:

  // Posts this rank's slot; the slot is read by the last arriver (validation) and by peers until the final
  // rendezvous of the collective.
  void post_slot(const Slot& s) {
    std::lock_guard<std::mutex> lock(group_->mu);
    group_->slots[rank_] = s;
  }

  // Runs under the group lock in the last arriver: every rank must have called the same collective with the
  // same shape. Throws CommError (which aborts the world) otherwise.
  void validate(Step step) {
    auto& slots = group_->slots;
    const Slot& a = slots[0];
    for (int r = 1; r < group_->size; ++r) {
      const Slot& b = slots[r];
      bool same = a.step == b.step;
      if (same && step != Step::barrier && step != Step::split && step != Step::all_to_all) {
        same = a.count == b.count && a.dtype == b.dtype;
      }
      if (same && (step == Step::all_reduce || step == Step::reduce_scatter)) same = a.op == b.op;
      if (same && step == Step::broadcast) same = a.root == b.root;
      if (same && step == Step::all_to_all) same = a.dtype == b.dtype;
      if (!same) {
        DS_THROW(CommError, "[comm] mismatched collectives in a local world of {}: rank 0 called {} but rank {} called {}",
                 group_->size, describe(a), r, describe(b));
      }
    }
    if (step == Step::all_to_all) {
      for (int s = 0; s < group_->size; ++s) {
        for (int r = 0; r < group_->size; ++r) {
          const size_t sent = (*slots[s].send_counts)[r], expected = (*slots[r].recv_counts)[s];
          DS_CHECK_AS(CommError, sent == expected,
                      "[comm] all_to_all_v: rank {} sends {} elements to rank {}, which expects {} from it", s, sent,
                      r, expected);
        }
      }
    }
  }

  void run_all_reduce(std::byte* data, size_t count, DType dtype, ReduceOp op) {
    post_slot({.step = Step::all_reduce, .send = data, .recv = data, .count = count, .dtype = dtype, .op = op});
    const size_t es = dtype_size(dtype);
    group_->rendezvous(rank_, Step::all_reduce, [&] { validate(Step::all_reduce); });
    // Rank r folds segment r of every rank's buffer (Note [Ring segments], 16-element granule).
    const int W = group_->size;
    const RingSplit split(count, W, 16);
    const size_t begin = split.begin(rank_), end = split.end(rank_);
    std::byte* mine = nullptr;
    try {
      mine = group_->share_buffers[rank_].reserve((end - begin) * es);  // nobody reads the old share any more
    } catch (const std::exception& e) {
      abort_world(fmt::format("[comm] rank {} could not allocate its all_reduce buffer: {}", world_rank_, e.what()));
    }
    for (int r = 0; r < W; ++r) srcs_[r] = group_->slots[r].send + begin * es;
    fold(mine, srcs_.data(), srcs_.size(), end - begin, dtype, op);
    group_->shares[rank_] = mine;
    group_->rendezvous(rank_, Step::all_reduce);
    for (int r = 0; r < W; ++r) {
      const size_t b = split.begin(r), e = split.end(r);
      if (e > b) std::memcpy(data + b * es, group_->shares[r], (e - b) * es);
    }
  }

  void run_reduce_scatter(const std::byte* send, std::byte* recv, size_t count, DType dtype, ReduceOp op) {
    const size_t es = dtype_size(dtype), block = count * es;
    // In place (recv is this rank's own block of send) works directly: a rank writes only its own block.
    if (recv != send + rank_ * block && overlaps(send, block * size(), recv, block))
      send = staging_.copy_of(send, block * size());
    post_slot({.step = Step::reduce_scatter, .send = send, .recv = recv, .count = count, .dtype = dtype, .op = op});
    group_->rendezvous(rank_, Step::reduce_scatter, [&] { validate(Step::reduce_scatter); });
    for (int r = 0; r < size(); ++r) srcs_[r] = group_->slots[r].send + count * rank_ * es;
    fold(recv, srcs_.data(), srcs_.size(), count, dtype, op);
    group_->rendezvous(rank_, Step::reduce_scatter);
  }

  void run_all_gather(const std::byte* send, std::byte* recv, size_t count, DType dtype) {
    const size_t block = count * dtype_size(dtype);
    if (send != recv + rank_ * block && overlaps(send, block, recv, block * size()))
      send = staging_.copy_of(send, block);
    post_slot({.step = Step::all_gather, .send = send, .recv = recv, .count = count, .dtype = dtype});
    group_->rendezvous(rank_, Step::all_gather, [&] { validate(Step::all_gather); });
    for (int r = 0; r < size(); ++r) {
      const std::byte* src = group_->slots[r].send;
      if (block > 0 && src != recv + r * block) std::memcpy(recv + r * block, src, block);
    }
    group_->rendezvous(rank_, Step::all_gather);
  }

  void run_broadcast(std::byte* data, size_t count, DType dtype, int root) {
    post_slot({.step = Step::broadcast, .send = data, .recv = data, .count = count, .dtype = dtype, .root = root});
    group_->rendezvous(rank_, Step::broadcast, [&] { validate(Step::broadcast); });
    const std::byte* src = group_->slots[root].send;
    if (rank_ != root && count > 0 && src != data) std::memcpy(data, src, count * dtype_size(dtype));
    group_->rendezvous(rank_, Step::broadcast);
  }

  void run_all_to_all_v(const std::byte* send, const std::vector<size_t>& send_counts, std::byte* recv,
                       const std::vector<size_t>& recv_counts, DType dtype) {
    const size_t es = dtype_size(dtype);
    size_t send_total = 0, recv_total = 0;
    for (size_t c : send_counts) send_total += c;
    for (size_t c : recv_counts) recv_total += c;
    if (overlaps(send, send_total * es, recv, recv_total * es)) send = staging_.copy_of(send, send_total * es);
    post_slot({.step = Step::all_to_all, .send = send, .recv = recv, .dtype = dtype, .send_counts = &send_counts,
               .recv_counts = &recv_counts});
    group_->rendezvous(rank_, Step::all_to_all, [&] { validate(Step::all_to_all); });
    size_t recv_offset = 0;
    for (int src = 0; src < size(); ++src) {
      const Slot& peer = group_->slots[src];
      size_t send_offset = 0;  // where rank `src` keeps the block for this rank
      for (int r = 0; r < rank_; ++r) send_offset += (*peer.send_counts)[r];
      const size_t n = recv_counts[src] * es;
      if (n > 0) std::memcpy(recv + recv_offset * es, peer.send + send_offset * es, n);
      recv_offset += recv_counts[src];
    }
    group_->rendezvous(rank_, Step::all_to_all);
  }

  std::unique_ptr<Communicator> do_split(int color, int key) {
    post_slot({.step = Step::split, .color = color, .key = key});
    group_->rendezvous(rank_, Step::split, [&] {
      validate(Step::split);
      auto& slots = group_->slots;
      std::map<int, std::vector<std::pair<int, int>>> by_color;  // color -> (key, old rank)
      for (int r = 0; r < group_->size; ++r) {
        if (slots[r].color >= 0) by_color[slots[r].color].emplace_back(slots[r].key, r);
      }
      for (auto& [c, members] : by_color) {
        std::sort(members.begin(), members.end());
        std::vector<int> world_ranks;
        for (auto [k, r] : members) world_ranks.push_back(group_->world_ranks[r]);
        auto g = std::make_shared<LocalGroup>(group_->job, std::move(world_ranks));
        group_->job->add_group(g);
        for (size_t i = 0; i < members.size(); ++i) {
          group_->split_groups[members[i].second] = g;
          group_->split_ranks[members[i].second] = static_cast<int>(i);
        }
      }
    });
    // Only this rank touches its own entry until the next split's last arriver, who waits for this rank.
    std::shared_ptr<LocalGroup> g = std::move(group_->split_groups[rank_]);
    group_->split_groups[rank_].reset();
    if (!g) return nullptr;
    return std::make_unique<LocalCommunicator>(std::move(g), group_->split_ranks[rank_]);
  }

  std::shared_ptr<P2POp> make_p2p(bool is_send, int peer, int tag, size_t count, DType dtype) {
    auto op = std::make_shared<P2POp>();
    op->group = group_;
    op->is_send = is_send;
    op->self = rank_;
    op->peer = peer;
    op->tag = tag;
    op->count = count;
    op->dtype = dtype;
    return op;
  }

  // Matches `op` against the oldest waiting counterpart (MPI's non-overtaking order) or queues it.
  void post(const std::shared_ptr<P2POp>& op, std::map<LocalGroup::P2PKey, std::deque<std::shared_ptr<P2POp>>>& mine,
            std::map<LocalGroup::P2PKey, std::deque<std::shared_ptr<P2POp>>>& theirs, LocalGroup::P2PKey key) {
    std::unique_lock<std::mutex> lock(group_->mu);
    group_->throw_if_aborted(lock);
    auto it = theirs.find(key);
    if (it != theirs.end() && !it->second.empty()) {
      std::shared_ptr<P2POp> other = std::move(it->second.front());
      it->second.pop_front();
      if (op->is_send) {
        complete_pair(*group_, *op, *other);
      } else {
        complete_pair(*group_, *other, *op);
      }
    } else {
      mine[key].push_back(op);
    }
  }

  std::shared_ptr<LocalGroup> group_;
  const int rank_;
  const int world_rank_;
  std::vector<const void*> srcs_;       // per-call source pointers, sized once
  GrowBuffer staging_;                  // a copy of a send buffer that overlaps its recv buffer
  WorkQueue worker_;                    // last member: stopped (joined) first
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> make_local_world(int world_size, const LocalWorldOptions& options) {
  DS_CHECK_AS(CommError, world_size >= 1, "[comm] a local world needs at least 1 rank, got {}", world_size);
  DS_CHECK_AS(CommError, options.timeout_s >= 0, "[comm] local world timeout must be >= 0 seconds, got {}",
              options.timeout_s);
  auto job = std::make_shared<LocalJob>(world_size, options);
  std::vector<int> members(world_size);
  for (int r = 0; r < world_size; ++r) members[r] = r;
  auto group = std::make_shared<LocalGroup>(job, std::move(members));
  job->add_group(group);
  std::vector<std::unique_ptr<Communicator>> comms;
  comms.reserve(world_size);
  for (int r = 0; r < world_size; ++r) comms.push_back(std::make_unique<LocalCommunicator>(group, r));
  return comms;
}

void run_local_world(int world_size, const std::function<void(Communicator&)>& fn, const LocalWorldOptions& options) {
  auto comms = make_local_world(world_size, options);
  std::mutex mu;
  std::exception_ptr first;
  std::vector<std::thread> threads;
  threads.reserve(world_size);
  for (int r = 0; r < world_size; ++r) {
    threads.emplace_back([&, r] {
      set_log_rank(r, world_size);
      auto& comm = static_cast<LocalCommunicator&>(*comms[r]);
      std::string reason;
      std::exception_ptr error;
      try {
        fn(comm);
        comm.depart();
        return;
      } catch (const std::exception& e) {
        reason = e.what();
        error = std::current_exception();
      } catch (...) {
        reason = "unknown exception";
        error = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lock(mu);
        if (!first) first = error;
      }
      comm.abort(reason);
    });
  }
  for (auto& t : threads) t.join();
  comms.clear();
  if (first) std::rethrow_exception(first);
}

}  // namespace ds::comm
