// The io_uring engine and swap files: bytes written under every aio setting read back the same (compared with the
// buffer they came from), many requests in flight at once, the nvme tier's accounting, and every failure a user or
// a disk can cause: a missing path, a file where a directory belongs, a file system without direct I/O (ramfs, when
// this process may mount one), no room for the file (a file-size limit), and an I/O error or a file that ends early
// in the middle of a transfer (injected), each an IoError naming the path.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/resource.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <vector>

#include "common/scratch_dir.h"
#include "ds/core/error.h"
#include "ds/core/rng.h"
#include "ds/offload/aio.h"

namespace ds::offload {
namespace {

class Aio : public test::ScratchDirTest {};

std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<uint8_t> out(n);
  for (auto& b : out) b = static_cast<uint8_t>(rng.next_u64());
  return out;
}

template <typename F>
void expect_io_error(F&& f, std::initializer_list<const char*> parts) {
  try {
    f();
    ADD_FAILURE() << "no IoError";
  } catch (const IoError& e) {
    for (const char* p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST_F(Aio, WritesReadBackUnderEveryOption) {
  const int64_t bytes = 3 * (1 << 20) + 5 * kIoAlign;  // not a multiple of the block size nor of the threads
  const std::vector<uint8_t> data = random_bytes(static_cast<size_t>(bytes), 1);
  for (const int threads : {1, 3}) {
    for (const int depth : {1, 8}) {
      for (const bool single : {false, true}) {
        for (const bool overlap : {false, true}) {
          AioOptions o;
          o.block_size = 256 << 10;
          o.queue_depth = depth;
          o.intra_op_parallelism = threads;
          o.single_submit = single;
          o.overlap_events = overlap;
          const std::string what = fmt::format("threads {} depth {} single {} overlap {}", threads, depth, single,
                                               overlap);
          SwapFile file(dir_.string(), "f.swp", 2 * bytes, Category::optimizer);
          AioEngine aio(o);
          Tensor out = io_buffer(bytes, Category::optimizer, false);
          Tensor in = io_buffer(bytes, Category::optimizer, false);
          std::memcpy(out.raw(), data.data(), data.size());
          AioEngine::wait(aio.write(file, kIoAlign * 3, out.raw(), bytes));
          AioEngine::wait(aio.read(file, kIoAlign * 3, in.raw(), bytes));
          EXPECT_EQ(std::memcmp(in.raw(), data.data(), data.size()), 0) << what;
          EXPECT_EQ(aio.bytes_written(), bytes) << what;
          EXPECT_EQ(aio.bytes_read(), bytes) << what;
          EXPECT_GT(aio.busy_seconds(), 0.0) << what;
        }
      }
    }
  }
}

TEST_F(Aio, ManyRequestsInFlightLandInTheirOwnPlaces) {
  constexpr int kRequests = 24;
  constexpr int64_t kEach = 5 * kIoAlign;
  AioOptions o;
  o.block_size = kIoAlign;
  o.queue_depth = 4;
  o.intra_op_parallelism = 2;
  SwapFile file(dir_.string(), "f.swp", kRequests * kEach, Category::optimizer);
  AioEngine aio(o);
  Tensor src = io_buffer(kRequests * kEach, Category::optimizer, /*pin=*/true);
  Tensor dst = io_buffer(kRequests * kEach, Category::optimizer, false);
  const std::vector<uint8_t> data = random_bytes(size_t(kRequests * kEach), 2);
  std::memcpy(src.raw(), data.data(), data.size());
  auto* s = static_cast<char*>(src.raw());
  auto* d = static_cast<char*>(dst.raw());
  std::vector<IoTicket> tickets;
  for (int i = 0; i < kRequests; ++i) tickets.push_back(aio.write(file, i * kEach, s + i * kEach, kEach));
  for (const IoTicket& t : tickets) AioEngine::wait(t);
  tickets.clear();
  for (int i = kRequests - 1; i >= 0; --i) tickets.push_back(aio.read(file, i * kEach, d + i * kEach, kEach));
  for (const IoTicket& t : tickets) AioEngine::wait(t);
  for (const IoTicket& t : tickets) EXPECT_TRUE(t.done());
  EXPECT_EQ(std::memcmp(d, data.data(), data.size()), 0);
}

TEST_F(Aio, SwapFilesAreAccountedInTheNvmeTierAndLeaveNothingBehind) {
  MemoryTracker tracker;
  TrackerScope scope(tracker);
  {
    SwapFile file(dir_.string(), "f.swp", 10000, Category::optimizer);  // rounded up to whole 4 KiB blocks
    EXPECT_EQ(file.bytes(), 3 * kIoAlign);
    EXPECT_EQ(tracker.current(Tier::nvme, Category::optimizer), 3 * kIoAlign);
    EXPECT_TRUE(std::filesystem::is_empty(dir_)) << "the swap file is unlinked once open";
  }
  EXPECT_EQ(tracker.current(Tier::nvme, Category::optimizer), 0);
  EXPECT_EQ(tracker.peak(Tier::nvme), 3 * kIoAlign);
}

TEST_F(Aio, BadPathsAreClearErrors) {
  expect_io_error([&] { SwapFile f(path("missing"), "f.swp", 4096, Category::optimizer); },
                  {"nvme_path", "missing", "does not exist", "create the directory"});
  write_bytes(path("plain"), "x");
  expect_io_error([&] { SwapFile f(path("plain"), "f.swp", 4096, Category::optimizer); },
                  {"plain", "is not a directory"});
}

TEST_F(Aio, AFileSystemWithoutDirectIoIsNamed) {
  const std::string mnt = path("ramfs");
  std::filesystem::create_directory(mnt);
  if (::mount("ramfs", mnt.c_str(), "ramfs", 0, nullptr) != 0) GTEST_SKIP() << "cannot mount a ramfs here";
  expect_io_error([&] { SwapFile f(mnt, "f.swp", 4096, Category::optimizer); },
                  {"does not support direct I/O", "ramfs"});
  ::umount(mnt.c_str());
}

TEST_F(Aio, NoRoomForTheFileIsAnErrorAtTheStart) {
  // A file-size limit stands in for a full drive: fallocate fails before any state is written.
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  const auto previous = std::signal(SIGXFSZ, SIG_IGN);
  rlimit small = old;
  small.rlim_cur = 1 << 20;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  MemoryTracker tracker;
  {
    TrackerScope scope(tracker);
    expect_io_error([&] { SwapFile f(dir_.string(), "f.swp", 8 << 20, Category::optimizer); },
                    {"cannot reserve 8.0 MiB", "f.swp", "free space"});
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, previous);
  EXPECT_EQ(tracker.peak(Tier::nvme), 0);
}

TEST_F(Aio, AnInjectedFailureMidTransferNamesTheFile) {
  AioOptions o;
  o.block_size = kIoAlign;
  SwapFile file(dir_.string(), "f.swp", 64 * kIoAlign, Category::optimizer);
  AioEngine aio(o);
  Tensor buf = io_buffer(64 * kIoAlign, Category::optimizer, false);
  std::memset(buf.raw(), 7, 64 * kIoAlign);
  inject_io_fault({/*on_write=*/true, /*after_bytes=*/10 * kIoAlign, /*error=*/EIO, false});
  const IoTicket w = aio.write(file, 0, buf.raw(), 64 * kIoAlign);
  expect_io_error([&] { AioEngine::wait(w); }, {"writing", "f.swp", "Input/output error"});
  expect_io_error([&] { AioEngine::wait(w); }, {"Input/output error"});  // a failed ticket stays failed
  // The next write is whole again; a read that ends early is an error, not a silent zero fill.
  AioEngine::wait(aio.write(file, 0, buf.raw(), 64 * kIoAlign));
  inject_io_fault({/*on_write=*/false, /*after_bytes=*/0, 0, /*short_transfer=*/true});
  expect_io_error([&] { AioEngine::wait(aio.read(file, 0, buf.raw(), 8 * kIoAlign)); },
                  {"reading", "f.swp", "ended early"});
  clear_io_fault();
  AioEngine::wait(aio.read(file, 0, buf.raw(), 8 * kIoAlign));
  EXPECT_EQ(static_cast<uint8_t*>(buf.raw())[8 * kIoAlign - 1], 7);
}

TEST_F(Aio, BadOptionsAreConfigErrors) {
  AioOptions o;
  o.block_size = 1000;
  EXPECT_THROW(AioEngine{o}, ConfigError);
  o = {};
  o.queue_depth = 0;
  EXPECT_THROW(AioEngine{o}, ConfigError);
  o = {};
  o.intra_op_parallelism = 0;
  EXPECT_THROW(AioEngine{o}, ConfigError);
}

}  // namespace
}  // namespace ds::offload
