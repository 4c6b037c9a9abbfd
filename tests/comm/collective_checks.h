// Backend-independent collective checks, run by every rank of a world (local threads or MPI processes) and
// compared with plain reference computations written here. Inputs are small integers (as f32 or i32) given by a
// formula of (rank, index), so every rank can compute every other rank's input and sums are exact in any order;
// bitwise determinism against an in-order float reference is checked by the local test only.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/core/error.h"
#include "ds/kernels/cpu/kernels.h"

namespace ds::test {

template <typename T>
T input_value(int rank, size_t i, int salt) {
  return static_cast<T>(static_cast<int>((rank * 7 + static_cast<int64_t>(i) * 13 + salt * 5) % 41) - 20);
}

template <typename T>
T apply(comm::ReduceOp op, T a, T b) {
  switch (op) {
    case comm::ReduceOp::sum: return a + b;
    case comm::ReduceOp::max: return std::max(a, b);
    case comm::ReduceOp::min: return std::min(a, b);
  }
  return a;
}

// Bitwise comparison; reports the first differing element only.
template <typename T>
void expect_same(const std::vector<T>& actual, const std::vector<T>& expected, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (std::memcmp(&actual[i], &expected[i], sizeof(T)) != 0) {
      ADD_FAILURE() << what << ": element " << i << " is " << actual[i] << ", expected " << expected[i];
      return;
    }
  }
}

inline std::string where(const comm::Communicator& c, const char* what) {
  return std::string(what) + " on rank " + std::to_string(c.rank()) + "/" + std::to_string(c.size());
}

template <typename T>
void check_all_reduce(comm::Communicator& c, comm::ReduceOp op, size_t count) {
  const int W = c.size(), r = c.rank();
  std::vector<T> data(count), expected(count);
  for (size_t i = 0; i < count; ++i) {
    data[i] = input_value<T>(r, i, 1);
    T acc = input_value<T>(0, i, 1);
    for (int s = 1; s < W; ++s) acc = apply(op, acc, input_value<T>(s, i, 1));
    expected[i] = acc;
  }
  c.all_reduce(data.data(), count, DTypeOf<T>::value, op);
  expect_same(data, expected, where(c, "all_reduce"));
}

template <typename T>
void check_reduce_scatter(comm::Communicator& c, comm::ReduceOp op, size_t count, bool in_place) {
  const int W = c.size(), r = c.rank();
  std::vector<T> send(count * W), recv(count), expected(count);
  for (size_t j = 0; j < send.size(); ++j) send[j] = input_value<T>(r, j, 2);
  for (size_t i = 0; i < count; ++i) {
    T acc = input_value<T>(0, r * count + i, 2);
    for (int s = 1; s < W; ++s) acc = apply(op, acc, input_value<T>(s, r * count + i, 2));
    expected[i] = acc;
  }
  T* out = in_place ? send.data() + r * count : recv.data();
  c.reduce_scatter(send.data(), out, count, DTypeOf<T>::value, op);
  std::vector<T> got(out, out + count);
  expect_same(got, expected, where(c, in_place ? "reduce_scatter (in place)" : "reduce_scatter"));
}

template <typename T>
void check_all_gather(comm::Communicator& c, size_t count, bool in_place) {
  const int W = c.size(), r = c.rank();
  std::vector<T> send(count), recv(count * W), expected(count * W);
  for (size_t i = 0; i < count; ++i) send[i] = input_value<T>(r, i, 3);
  for (int s = 0; s < W; ++s)
    for (size_t i = 0; i < count; ++i) expected[s * count + i] = input_value<T>(s, i, 3);
  if (in_place) {
    std::copy(send.begin(), send.end(), recv.begin() + r * count);
    c.all_gather(recv.data() + r * count, recv.data(), count, DTypeOf<T>::value);
  } else {
    c.all_gather(send.data(), recv.data(), count, DTypeOf<T>::value);
  }
  expect_same(recv, expected, where(c, in_place ? "all_gather (in place)" : "all_gather"));
}

template <typename T>
void check_broadcast(comm::Communicator& c, size_t count) {
  for (int root = 0; root < c.size(); ++root) {
    std::vector<T> data(count), expected(count);
    for (size_t i = 0; i < count; ++i) {
      data[i] = input_value<T>(c.rank(), i, 4 + root);
      expected[i] = input_value<T>(root, i, 4 + root);
    }
    c.broadcast(data.data(), count, DTypeOf<T>::value, root);
    expect_same(data, expected, where(c, "broadcast") + " from root " + std::to_string(root));
  }
}

// Uneven counts: rank s sends (s + 2d) % 3 + (s != d) elements to rank d, valued s*1000 + d*100 + k.
inline size_t a2a_count(int src, int dst) { return static_cast<size_t>((src + 2 * dst) % 3 + (src != dst ? 1 : 0)); }

template <typename T>
void check_all_to_all_v(comm::Communicator& c) {
  const int W = c.size(), r = c.rank();
  std::vector<size_t> send_counts(W), recv_counts(W);
  std::vector<T> send, expected;
  for (int d = 0; d < W; ++d) {
    send_counts[d] = a2a_count(r, d);
    for (size_t k = 0; k < send_counts[d]; ++k) send.push_back(static_cast<T>(r * 1000 + d * 100 + k));
  }
  for (int s = 0; s < W; ++s) {
    recv_counts[s] = a2a_count(s, r);
    for (size_t k = 0; k < recv_counts[s]; ++k) expected.push_back(static_cast<T>(s * 1000 + r * 100 + k));
  }
  std::vector<T> recv(expected.size(), static_cast<T>(-1));
  c.all_to_all_v_async(send.data(), send_counts, recv.data(), recv_counts, DTypeOf<T>::value)->wait();
  expect_same(recv, expected, where(c, "all_to_all_v"));
}

// Ring exchange posted send-first on every rank (would deadlock with blocking rendezvous sends), with two tags
// and two messages on one tag (which must arrive in order).
inline void check_send_recv(comm::Communicator& c) {
  const int W = c.size(), r = c.rank();
  const int to = (r + 1) % W, from = (r + W - 1) % W;
  const size_t n = 257;
  std::vector<float> a(n), b(n), d(n), ra(n), rb(n), rd(n);
  for (size_t i = 0; i < n; ++i) {
    a[i] = input_value<float>(r, i, 10);
    b[i] = input_value<float>(r, i, 11);
    d[i] = input_value<float>(r, i, 12);
  }
  auto s1 = c.send_async(a.data(), n, DType::f32, to, 7);
  auto s2 = c.send_async(b.data(), n, DType::f32, to, 8);
  auto s3 = c.send_async(d.data(), n, DType::f32, to, 7);
  auto q2 = c.recv_async(rb.data(), n, DType::f32, from, 8);
  auto q1 = c.recv_async(ra.data(), n, DType::f32, from, 7);
  auto q3 = c.recv_async(rd.data(), n, DType::f32, from, 7);
  for (auto& w : {s1, s2, s3, q1, q2, q3}) w->wait();
  std::vector<float> ea(n), eb(n), ed(n);
  for (size_t i = 0; i < n; ++i) {
    ea[i] = input_value<float>(from, i, 10);
    eb[i] = input_value<float>(from, i, 11);
    ed[i] = input_value<float>(from, i, 12);
  }
  expect_same(ra, ea, where(c, "recv tag 7 first"));
  expect_same(rb, eb, where(c, "recv tag 8"));
  expect_same(rd, ed, where(c, "recv tag 7 second"));
}

// Async collectives complete in issue order: once the last one is done, all earlier ones are.
inline void check_async_order(comm::Communicator& c) {
  const int W = c.size(), r = c.rank();
  constexpr int kCalls = 8;
  const size_t n = 20000;
  std::vector<std::vector<int32_t>> bufs(kCalls, std::vector<int32_t>(n));
  std::vector<comm::WorkPtr> works;
  for (int k = 0; k < kCalls; ++k) {
    for (size_t i = 0; i < n; ++i) bufs[k][i] = input_value<int32_t>(r, i, 20 + k);
    works.push_back(c.all_reduce_async(bufs[k].data(), n, DType::i32, comm::ReduceOp::sum));
  }
  works.back()->wait();
  for (int k = 0; k < kCalls; ++k) EXPECT_TRUE(works[k]->test()) << where(c, "async order") << " call " << k;
  for (int k = 0; k < kCalls; ++k) {
    works[k]->wait();
    std::vector<int32_t> expected(n);
    for (size_t i = 0; i < n; ++i) {
      int32_t acc = 0;
      for (int s = 0; s < W; ++s) acc += input_value<int32_t>(s, i, 20 + k);
      expected[i] = acc;
    }
    expect_same(bufs[k], expected, where(c, "async all_reduce"));
  }
}

// Note [Traffic accounting], written out independently: one call of each kind on f32 buffers.
inline void check_stats(comm::Communicator& c) {
  const int64_t W = c.size(), r = c.rank();
  c.stats().reset();
  std::vector<float> buf(1000 * W), out(1000 * W);
  c.all_reduce(buf.data(), 1000, DType::f32);                     // n = 4000
  c.reduce_scatter(buf.data(), out.data(), 250, DType::f32);      // n = 1000 W
  c.all_gather(buf.data(), out.data(), 250, DType::f32);          // n = 1000 W
  c.broadcast(buf.data(), 1000, DType::f32, 0);                   // n = 4000
  std::vector<size_t> counts(W, 3);
  c.all_to_all_v_async(buf.data(), counts, out.data(), counts, DType::f32)->wait();
  const int to = static_cast<int>((r + 1) % W), from = static_cast<int>((r + W - 1) % W);
  auto s = c.send_async(buf.data(), 100, DType::f32, to, 1);
  c.recv_async(out.data(), 100, DType::f32, from, 1)->wait();
  s->wait();
  c.barrier();
  const comm::CommStats& st = c.stats();
  auto at = [&](comm::Collective k) { return static_cast<size_t>(k); };
  for (int k = 0; k < comm::kCollectiveCount; ++k)
    EXPECT_EQ(st.calls[k], 1) << comm::collective_name(comm::Collective(k));
  EXPECT_EQ(st.bytes[at(comm::Collective::all_reduce)], 2 * 4000 * (W - 1) / W);
  EXPECT_EQ(st.bytes[at(comm::Collective::reduce_scatter)], 1000 * (W - 1));
  EXPECT_EQ(st.bytes[at(comm::Collective::all_gather)], 1000 * (W - 1));
  EXPECT_EQ(st.bytes[at(comm::Collective::broadcast)], r == 0 ? 4000 : 0);
  EXPECT_EQ(st.bytes[at(comm::Collective::all_to_all)], 12 * (W - 1));
  EXPECT_EQ(st.bytes[at(comm::Collective::send)], 400);
  EXPECT_EQ(st.bytes[at(comm::Collective::recv)], 0);
  EXPECT_EQ(st.bytes[at(comm::Collective::barrier)], 0);
  EXPECT_EQ(st.payload[at(comm::Collective::all_reduce)], 4000);
  EXPECT_EQ(st.payload[at(comm::Collective::reduce_scatter)], 1000 * W);
  EXPECT_EQ(st.payload[at(comm::Collective::all_gather)], 1000 * W);
  EXPECT_EQ(st.payload[at(comm::Collective::broadcast)], 4000);
  EXPECT_EQ(st.payload[at(comm::Collective::all_to_all)], 12 * W);
  EXPECT_EQ(st.payload[at(comm::Collective::send)], 400);
  EXPECT_EQ(st.payload[at(comm::Collective::recv)], 400);
  EXPECT_EQ(st.total_bytes(), 2 * 4000 * (W - 1) / W + 2000 * (W - 1) + (r == 0 ? 4000 : 0) + 12 * (W - 1) + 400);
}

// color = rank % 2 with key = -rank (reversed order), then a split of that with rank 0 left out (color -1).
inline void check_split(comm::Communicator& c) {
  const int W = c.size(), r = c.rank();
  auto sub = c.split(r % 2, -r);
  ASSERT_NE(sub, nullptr);
  std::vector<int> same;  // old ranks of my color, in descending order (key = -rank)
  for (int s = W - 1; s >= 0; --s)
    if (s % 2 == r % 2) same.push_back(s);
  EXPECT_EQ(sub->size(), static_cast<int>(same.size())) << where(c, "split");
  EXPECT_EQ(sub->rank(), static_cast<int>(std::find(same.begin(), same.end(), r) - same.begin())) << where(c, "split");
  int32_t v = r, expected = 0;
  for (int s : same) expected += s;
  sub->all_reduce(&v, 1, DType::i32);
  EXPECT_EQ(v, expected) << where(c, "all_reduce in split");
  sub->stats().reset();
  sub->barrier();
  EXPECT_EQ(sub->stats().calls[static_cast<size_t>(comm::Collective::barrier)], 1);

  auto none = c.split(r == 0 ? -1 : 0, r);
  if (r == 0) {
    EXPECT_EQ(none, nullptr);
  } else {
    ASSERT_NE(none, nullptr);
    EXPECT_EQ(none->size(), W - 1);
    EXPECT_EQ(none->rank(), r - 1);
    int32_t one = 1;
    none->all_reduce(&one, 1, DType::i32);
    EXPECT_EQ(one, W - 1);
  }
}

// Random floats reduced three times: bitwise identical each time, and identical on every rank.
inline std::vector<float> check_repeatable_all_reduce(comm::Communicator& c, size_t n) {
  std::mt19937 rng(1234 + c.rank());
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<float> input(n);
  for (auto& x : input) x = dist(rng);
  std::vector<float> first;
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<float> data = input;
    c.all_reduce(data.data(), n, DType::f32);
    if (rep == 0) {
      first = data;
    } else {
      expect_same(data, first, where(c, "repeated all_reduce"));
    }
  }
  std::vector<float> rank0 = first;
  c.broadcast(rank0.data(), n, DType::f32, 0);
  expect_same(first, rank0, where(c, "all_reduce result versus rank 0's"));
  return first;
}

// 16-bit floats (f16, bf16): all-reduce (counts that split over the ranks and counts that do not) and
// reduce-scatter of small integers, which are exact in 16 bits, so any order of addition gives the same bits.
inline void check_half_collectives(comm::Communicator& c, DType dtype) {
  const int W = c.size(), r = c.rank();
  auto to16 = [&](const std::vector<float>& f) {
    std::vector<uint16_t> h(f.size());
    cpu::from_f32(h.data(), f.data(), dtype, f.size());
    return h;
  };
  auto to32 = [&](const std::vector<uint16_t>& h) {
    std::vector<float> f(h.size());
    cpu::to_f32(f.data(), h.data(), dtype, h.size());
    return f;
  };
  for (comm::ReduceOp op : {comm::ReduceOp::sum, comm::ReduceOp::max}) {
    for (size_t n : {size_t(W) * 1000, size_t(W) * 3 + 1}) {
      std::vector<float> mine(n), expected(n);
      for (size_t i = 0; i < n; ++i) {
        mine[i] = input_value<float>(r, i, 4);
        float acc = input_value<float>(0, i, 4);
        for (int s = 1; s < W; ++s) acc = apply(op, acc, input_value<float>(s, i, 4));
        expected[i] = acc;
      }
      std::vector<uint16_t> data = to16(mine);
      c.all_reduce(data.data(), n, dtype, op);
      expect_same(to32(data), expected, where(c, n % W == 0 ? "16-bit all_reduce" : "16-bit all_reduce (uneven)"));
    }
  }
  const size_t count = 2500;
  std::vector<float> send(count * W), expected(count);
  for (size_t j = 0; j < send.size(); ++j) send[j] = input_value<float>(r, j, 5);
  for (size_t i = 0; i < count; ++i) {
    float acc = 0;
    for (int s = 0; s < W; ++s) acc += input_value<float>(s, r * count + i, 5);
    expected[i] = acc;
  }
  std::vector<uint16_t> send16 = to16(send), recv16(count);
  c.reduce_scatter(send16.data(), recv16.data(), count, dtype);
  expect_same(to32(recv16), expected, where(c, "16-bit reduce_scatter"));
}

// Every check above, in one fixed order (every rank must call collectives in the same order).
inline void check_everything(comm::Communicator& c) {
  for (comm::ReduceOp op : {comm::ReduceOp::sum, comm::ReduceOp::max, comm::ReduceOp::min}) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{17}, size_t{5003}}) {
      check_all_reduce<float>(c, op, n);
      check_all_reduce<int32_t>(c, op, n);
    }
    check_reduce_scatter<float>(c, op, 1031, false);
    check_reduce_scatter<int32_t>(c, op, 1031, true);
  }
  check_all_gather<float>(c, 777, false);
  check_all_gather<int32_t>(c, 777, true);
  check_broadcast<float>(c, 333);
  check_broadcast<int32_t>(c, 1);
  check_all_to_all_v<float>(c);
  check_all_to_all_v<int32_t>(c);
  check_send_recv(c);
  check_async_order(c);
  check_stats(c);
  check_split(c);
  check_half_collectives(c, DType::bf16);
  check_half_collectives(c, DType::f16);
}

}  // namespace ds::test
