// The Communicator base: every public collective checks its arguments before a backend sees them (a clear CommError
// saying what was expected and what was found, and the backend is not called), and counts the traffic itself
// (Note [Traffic accounting]), so a backend that counts nothing still reports the formulas. A recording fake
// backend shows both; the local and self communicators show that the real backends inherit the checks.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/comm/local/local_comm.h"
#include "ds/core/error.h"

namespace ds {
namespace {

class DoneWork final : public comm::Work {
 public:
  void wait() override {}
  bool test() override { return true; }
};

// A backend of `size` ranks that records which of its methods ran and moves nothing.
class FakeBackend final : public comm::Communicator {
 public:
  FakeBackend(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "fake"; }
  std::unique_ptr<comm::Communicator> split(int, int) override { return nullptr; }
  void abort(const std::string&) noexcept override {}
  std::vector<std::string> calls;

 protected:
  comm::WorkPtr do_all_reduce(void*, size_t, DType, comm::ReduceOp) override { return done("all_reduce"); }
  comm::WorkPtr do_reduce_scatter(const void*, void*, size_t, DType, comm::ReduceOp) override {
    return done("reduce_scatter");
  }
  comm::WorkPtr do_all_gather(const void*, void*, size_t, DType) override { return done("all_gather"); }
  comm::WorkPtr do_broadcast(void*, size_t, DType, int) override { return done("broadcast"); }
  comm::WorkPtr do_all_to_all_v(const void*, const std::vector<size_t>&, void*, const std::vector<size_t>&,
                          DType) override {
    return done("all_to_all_v");
  }
  comm::WorkPtr do_send(const void*, size_t, DType, int, int) override { return done("send"); }
  comm::WorkPtr do_recv(void*, size_t, DType, int, int) override { return done("recv"); }
  comm::WorkPtr do_barrier() override { return done("barrier"); }

 private:
  comm::WorkPtr done(const char* what) {
    calls.emplace_back(what);
    return std::make_shared<DoneWork>();
  }
  int rank_, size_;
};

// The CommError message of f, or "" when it does not throw one.
template <typename F>
std::string comm_error(F&& f) {
  try {
    f();
  } catch (const CommError& e) {
    return e.what();
  }
  return "";
}

size_t at(comm::Collective c) { return static_cast<size_t>(c); }

TEST(CommunicatorBase, CountsTheRingTrafficForEveryBackend) {
  FakeBackend c(1, 4);
  std::vector<float> buf(4000);
  c.all_reduce(buf.data(), 1000, DType::f32);              // n = 4000 bytes
  c.reduce_scatter(buf.data(), buf.data(), 250, DType::f32);  // n = 4000
  c.all_gather(buf.data(), buf.data(), 250, DType::bf16);     // n = 2000
  c.broadcast(buf.data(), 10, DType::f32, 1);                 // the root sends 40
  c.broadcast(buf.data(), 10, DType::f32, 0);                 // others send nothing
  c.all_to_all_v(buf.data(), {1, 2, 3, 4}, buf.data(), {4, 2, 3, 1}, DType::i32);  // to others: 1 + 3 + 4
  c.send(buf.data(), 5, DType::f32, 0, 3);
  c.recv(buf.data(), 5, DType::f32, 2, 3);
  c.barrier();
  const comm::CommStats& s = c.stats();
  EXPECT_EQ(s.bytes[at(comm::Collective::all_reduce)], 2 * 4000 * 3 / 4);
  EXPECT_EQ(s.bytes[at(comm::Collective::reduce_scatter)], 4000 * 3 / 4);
  EXPECT_EQ(s.bytes[at(comm::Collective::all_gather)], 2000 * 3 / 4);
  EXPECT_EQ(s.bytes[at(comm::Collective::broadcast)], 40);
  EXPECT_EQ(s.payload[at(comm::Collective::broadcast)], 80);
  EXPECT_EQ(s.bytes[at(comm::Collective::all_to_all)], (1 + 3 + 4) * 4);
  EXPECT_EQ(s.payload[at(comm::Collective::all_to_all)], 10 * 4);
  EXPECT_EQ(s.bytes[at(comm::Collective::send)], 20);
  EXPECT_EQ(s.bytes[at(comm::Collective::recv)], 0);
  EXPECT_EQ(s.payload[at(comm::Collective::recv)], 20);
  EXPECT_EQ(s.calls[at(comm::Collective::barrier)], 1);
  EXPECT_EQ(c.calls.size(), 9u);
  // all_to_all with equal blocks is all_to_all_v underneath.
  c.all_to_all(buf.data(), buf.data(), 2, DType::f32);
  EXPECT_EQ(c.calls.back(), "all_to_all_v");
  EXPECT_EQ(s.calls[at(comm::Collective::all_to_all)], 2);
}

TEST(CommunicatorBase, RejectsBadArgumentsBeforeTheBackendWithClearErrors) {
  FakeBackend c(0, 2);
  std::vector<float> buf(16);
  auto expect = [&](const std::string& message, const std::vector<std::string>& needles) {
    EXPECT_FALSE(message.empty()) << "no CommError for " << needles.front();
    for (const std::string& n : needles) EXPECT_NE(message.find(n), std::string::npos) << message;
  };
  // Null buffers where the count names data.
  expect(comm_error([&] { c.all_reduce(nullptr, 4, DType::f32); }),
         {"[comm] all_reduce", "data buffer is null", "16 bytes of f32"});
  expect(comm_error([&] { c.reduce_scatter(buf.data(), nullptr, 4, DType::f32); }),
         {"reduce_scatter", "recv buffer is null", "16 bytes"});
  expect(comm_error([&] { c.all_gather(nullptr, buf.data(), 2, DType::bf16); }),
         {"all_gather", "send buffer is null", "4 bytes of bf16"});
  // Roots and peers outside the world, negative tags.
  expect(comm_error([&] { c.broadcast(buf.data(), 4, DType::f32, 2); }),
         {"broadcast", "root 2 is outside the world of 2 (ranks 0..1)"});
  expect(comm_error([&] { c.broadcast(buf.data(), 4, DType::f32, -1); }), {"root -1"});
  expect(comm_error([&] { c.send_async(buf.data(), 4, DType::f32, 5, 0); }), {"send", "peer 5 is outside"});
  expect(comm_error([&] { c.recv_async(buf.data(), 4, DType::f32, 1, -1); }), {"tag must be >= 0, got -1"});
  // Counts that do not match the world, or memory.
  expect(comm_error([&] { c.all_to_all_v(buf.data(), {1}, buf.data(), {1, 1}, DType::f32); }),
         {"all_to_all_v needs one count per rank (2), got 1 send and 2 recv counts"});
  expect(comm_error([&] { c.all_gather(buf.data(), buf.data(), size_t(1) << 62, DType::f32); }),
         {"larger than memory"});
  expect(comm_error([&] { c.all_reduce(buf.data(), 4, static_cast<DType>(9)); }), {"unknown dtype"});
  // None of them reached the backend or counted anything.
  EXPECT_TRUE(c.calls.empty());
  EXPECT_EQ(c.stats().total_payload(), 0);
  for (int64_t n : c.stats().calls) EXPECT_EQ(n, 0);
  // A zero count needs no buffer.
  c.all_reduce(nullptr, 0, DType::f32);
  EXPECT_EQ(c.calls.size(), 1u);
}

TEST(CommunicatorBase, TheBackendsInheritTheChecks) {
  auto world = comm::make_local_world(2);
  std::vector<float> buf(8);
  EXPECT_NE(comm_error([&] { world[1]->all_reduce(nullptr, 3, DType::f32); }).find("data buffer is null"),
            std::string::npos);
  EXPECT_NE(comm_error([&] { world[0]->broadcast(buf.data(), 2, DType::f32, 7); }).find("root 7"), std::string::npos);
  auto self = comm::make_self_communicator();
  EXPECT_NE(comm_error([&] { self->all_to_all_v(buf.data(), {3}, buf.data(), {2}, DType::f32); })
                .find("rank 0 sends 3 elements to itself but expects to receive 2"),
            std::string::npos);
  EXPECT_NE(comm_error([&] { self->reduce_scatter(buf.data(), nullptr, 2, DType::f32); }).find("recv buffer is null"),
            std::string::npos);
  EXPECT_EQ(self->stats().total_payload(), 0);
}

}  // namespace
}  // namespace ds
