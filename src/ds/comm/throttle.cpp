// The throttled communicator (Note [Throttled link] in throttle.h). Each call is issued to the wrapped
// communicator at once, on the caller's thread, so the wrapped backend sees every rank's calls in program order
// (point-to-point pairs and split() included); the link's thread then waits for it and sleeps the modelled time.
#include "ds/comm/throttle.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "ds/comm/work_queue.h"
#include "ds/core/error.h"

namespace ds::comm {
namespace {

// "<number><unit>": the number times the unit's factor, or -1 when the unit is not one of `units`.
double parse_quantity(const std::string& text, std::initializer_list<std::pair<const char*, double>> units) {
  const char* begin = text.c_str();
  char* end = nullptr;
  const double value = std::strtod(begin, &end);
  if (end == begin || !std::isfinite(value) || value < 0) return -1;
  std::string unit(end);
  std::transform(unit.begin(), unit.end(), unit.begin(), [](unsigned char c) { return std::tolower(c); });
  if (unit.size() > 2 && unit.substr(unit.size() - 2) == "/s") unit.resize(unit.size() - 2);
  for (const auto& [name, factor] : units)
    if (unit == name) return value * factor;
  return -1;
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

}  // namespace

LinkModel parse_link_model(const std::string& text) {
  const size_t comma = text.find(',');
  const std::string bw = trim(text.substr(0, comma));
  const std::string lat = comma == std::string::npos ? std::string() : trim(text.substr(comma + 1));
  LinkModel link;
  link.bandwidth = parse_quantity(bw, {{"bit", 1 / 8.0}, {"kbit", 1e3 / 8}, {"mbit", 1e6 / 8}, {"gbit", 1e9 / 8},
                                       {"b", 1}, {"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}});
  link.latency = lat.empty() ? 0.0 : parse_quantity(lat, {{"s", 1}, {"ms", 1e-3}, {"us", 1e-6}});
  DS_CHECK_AS(ConfigError, link.bandwidth > 0 && link.latency >= 0,
              "[comm] network model '{}' is not understood; expected '<bandwidth>[,<latency>]' with the bandwidth "
              "in kbit, mbit, gbit (bits per second) or kB, MB, GB (bytes per second) and the latency in s, ms or "
              "us, e.g. '1gbit,100us'", text);
  return link;
}

std::string describe(const LinkModel& link) {
  const double gbit = link.bandwidth * 8 / 1e9;
  const std::string bw = link.bandwidth <= 0 ? "unlimited"
                         : gbit >= 1         ? fmt::format("{:g} Gbit/s", gbit)
                                             : fmt::format("{:g} Mbit/s", gbit * 1e3);
  return fmt::format("{}, {:g} us", bw, link.latency * 1e6);
}

double link_seconds(Collective c, int world, int64_t bytes, const LinkModel& link) {
  const int W = world;
  if (W <= 1) return 0.0;  // a world of one has no link to cross
  int hops = 0;
  switch (c) {
    case Collective::all_reduce: hops = 2 * (W - 1); break;
    case Collective::reduce_scatter:
    case Collective::all_gather:
    case Collective::all_to_all:
    case Collective::broadcast: hops = W - 1; break;
    case Collective::send:
    case Collective::recv: hops = 1; break;
    case Collective::barrier: hops = static_cast<int>(std::ceil(std::log2(W))); break;
  }
  const double transfer = link.bandwidth > 0 ? static_cast<double>(bytes) / link.bandwidth : 0.0;
  return hops * link.latency + transfer;
}

namespace {

// One rank's link: shared by every communicator split from the throttled one.
struct Link {
  explicit Link(const LinkModel& m) : model(m) {}
  LinkModel model;
  std::atomic<int64_t> busy_ns{0};
  detail::WorkQueue queue{{}, "[comm] throttled link: work submitted after shutdown"};
};

class Throttled final : public ThrottledCommunicator {
 public:
  Throttled(Communicator& inner, std::shared_ptr<Link> link, int world_rank, bool intra_node,
            std::unique_ptr<Communicator> owned = nullptr)
      : owned_(std::move(owned)), inner_(inner), link_(std::move(link)), world_rank_(world_rank),
        intra_node_(intra_node) {}
  ~Throttled() override { link_->queue.drain(); }  // no transfer may outlive its communicator

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string backend() const override { return inner_.backend() + "+throttled"; }
  double link_busy_seconds() const override { return static_cast<double>(link_->busy_ns.load()) * 1e-9; }

  std::unique_ptr<Communicator> split(int color, int key) override {
    std::unique_ptr<Communicator> child = inner_.split(color, key);
    if (!child) return nullptr;
    bool intra = intra_node_;
    if (!intra && link_->model.node_size > 0) {  // one node when every member's world rank says so
      std::vector<int32_t> ranks(static_cast<size_t>(child->size()));
      const int32_t mine = world_rank_;
      child->all_gather(&mine, ranks.data(), 1, DType::i32);
      const int node = world_rank_ / link_->model.node_size;
      intra = std::all_of(ranks.begin(), ranks.end(), [&](int32_t r) { return r / link_->model.node_size == node; });
    }
    Communicator& ref = *child;
    return std::make_unique<Throttled>(ref, link_, world_rank_, intra, std::move(child));
  }
  void abort(const std::string& reason) noexcept override { inner_.abort(reason); }

 protected:
  WorkPtr do_all_reduce(void* data, size_t count, DType dtype, ReduceOp op) override {
    const int64_t n = bytes(count, dtype);
    return delayed(inner_.all_reduce_async(data, count, dtype, op), Collective::all_reduce, n);
  }
  WorkPtr do_reduce_scatter(const void* send, void* recv, size_t count, DType dtype, ReduceOp op) override {
    const int64_t n = bytes(count, dtype) * size();
    return delayed(inner_.reduce_scatter_async(send, recv, count, dtype, op), Collective::reduce_scatter, n);
  }
  WorkPtr do_all_gather(const void* send, void* recv, size_t count, DType dtype) override {
    const int64_t n = bytes(count, dtype) * size();
    return delayed(inner_.all_gather_async(send, recv, count, dtype), Collective::all_gather, n);
  }
  WorkPtr do_broadcast(void* data, size_t count, DType dtype, int root) override {
    return delayed(inner_.broadcast_async(data, count, dtype, root), Collective::broadcast, bytes(count, dtype));
  }
  WorkPtr do_all_to_all_v(const void* send, const std::vector<size_t>& send_counts, void* recv,
                          const std::vector<size_t>& recv_counts, DType dtype) override {
    int64_t sent = 0, received = 0;
    for (int r = 0; r < size(); ++r) {
      if (r == rank()) continue;
      sent += bytes(send_counts[static_cast<size_t>(r)], dtype);
      received += bytes(recv_counts[static_cast<size_t>(r)], dtype);
    }
    return delayed(inner_.all_to_all_v_async(send, send_counts, recv, recv_counts, dtype), Collective::all_to_all,
                   std::max(sent, received));
  }
  WorkPtr do_send(const void* data, size_t count, DType dtype, int peer, int tag) override {
    return delayed(inner_.send_async(data, count, dtype, peer, tag), Collective::send, bytes(count, dtype));
  }
  WorkPtr do_recv(void* data, size_t count, DType dtype, int peer, int tag) override {
    return delayed(inner_.recv_async(data, count, dtype, peer, tag), Collective::recv, bytes(count, dtype));
  }
  WorkPtr do_barrier() override { return delayed(inner_.barrier_async(), Collective::barrier, 0); }

 private:
  static int64_t bytes(size_t count, DType dtype) { return static_cast<int64_t>(count * dtype_size(dtype)); }

  // Completes once `inner` has and the link has carried the collective's ring bytes (n: the bytes it names).
  WorkPtr delayed(WorkPtr inner, Collective c, int64_t n) {
    const double seconds = intra_node_ ? 0.0 : link_seconds(c, size(), ring_bytes(c, n, size()), link_->model);
    Link* link = link_.get();
    return link_->queue.submit([inner = std::move(inner), seconds, link] {
      inner->wait();
      const auto ns = static_cast<int64_t>(seconds * 1e9);
      if (ns > 0) std::this_thread::sleep_for(std::chrono::nanoseconds(ns));
      link->busy_ns += ns;
    });
  }

  std::unique_ptr<Communicator> owned_;  // a split's wrapped communicator; null for the root
  Communicator& inner_;
  std::shared_ptr<Link> link_;
  int world_rank_;
  bool intra_node_;  // every member on this rank's node: no link time
};

}  // namespace

std::unique_ptr<ThrottledCommunicator> make_throttled(Communicator& inner, const LinkModel& link) {
  const bool one_node = link.node_size > 0 && inner.size() <= link.node_size;
  return std::make_unique<Throttled>(inner, std::make_shared<Link>(link), inner.rank(), one_node);
}

}  // namespace ds::comm
