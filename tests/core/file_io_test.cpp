// AtomicFileWriter and MappedFile against the file system itself: contents read back with std::ifstream, directory
// listings for stray temp files, and a write made to fail part-way by lowering RLIMIT_FSIZE (SIGXFSZ ignored).
#include "ds/core/file_io.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common/scratch_dir.h"
#include "ds/core/error.h"

namespace ds {
namespace {

namespace fs = std::filesystem;

class FileIoTest : public test::ScratchDirTest {
 protected:
  static void write_atomic(const std::string& p, const std::string& bytes) {
    AtomicFileWriter out(p, "file_io_test");
    out.write(bytes.data(), bytes.size());
    out.commit();
  }
};

TEST_F(FileIoTest, CommitReplacesTheFileAndLeavesNoTemp) {
  const std::string p = path("a.bin");
  write_atomic(p, "first");
  EXPECT_EQ(read_bytes(p), "first");
  {
    AtomicFileWriter out(p, "file_io_test");
    EXPECT_EQ(out.temp_path().rfind(p + ".tmp." + std::to_string(::getpid()) + ".", 0), 0u) << out.temp_path();
    out.write("sec", 3);
    out.write("ond!", 4);
    EXPECT_EQ(read_bytes(p), "first");  // nothing visible before commit()
    EXPECT_TRUE(fs::exists(out.temp_path()));
    out.commit();
  }
  EXPECT_EQ(read_bytes(p), "second!");
  EXPECT_EQ(dir_entries(), (std::vector<std::string>{"a.bin"}));
}

TEST_F(FileIoTest, TwoWritersOfOnePathUseDistinctTempFiles) {
  const std::string p = path("b.bin");
  AtomicFileWriter one(p, "file_io_test");
  AtomicFileWriter two(p, "file_io_test");
  EXPECT_NE(one.temp_path(), two.temp_path());
  one.write("1", 1);
  two.write("2", 1);
  one.commit();
  two.commit();
  EXPECT_EQ(read_bytes(p), "2");
  EXPECT_EQ(dir_entries(), (std::vector<std::string>{"b.bin"}));
}

TEST_F(FileIoTest, AbandonedWriterKeepsTheOldFileAndRemovesItsTemp) {
  const std::string p = path("c.bin");
  write_bytes(p, "old");
  try {
    AtomicFileWriter out(p, "file_io_test");
    out.write("new contents", 12);
    throw std::runtime_error("caller failed between write() and commit()");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(read_bytes(p), "old");
  EXPECT_EQ(dir_entries(), (std::vector<std::string>{"c.bin"}));
}

TEST_F(FileIoTest, FailedWriteKeepsTheOldFileAndRemovesItsTemp) {
  const std::string p = path("d.bin");
  write_bytes(p, "old");
  const std::string big(64 * 1024, 'x');
  struct rlimit saved {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  struct rlimit low = saved;
  low.rlim_cur = 4096;
  auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &low), 0);
  std::string message;
  try {
    write_atomic(p, big);
  } catch (const IoError& e) {
    message = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  ::signal(SIGXFSZ, old_handler);
  EXPECT_EQ(message.rfind("[file_io_test] '" + p + "': writing", 0), 0u) << message;
  EXPECT_NE(message.find("disk space"), std::string::npos) << message;
  EXPECT_EQ(read_bytes(p), "old");
  EXPECT_EQ(dir_entries(), (std::vector<std::string>{"d.bin"}));
}

TEST_F(FileIoTest, MissingDirectoryIsAnIoError) {
  const std::string p = path("no/such/dir/e.bin");
  try {
    AtomicFileWriter out(p, "file_io_test");
    ADD_FAILURE() << "expected IoError";
  } catch (const IoError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("[file_io_test] '" + p + "'", 0), 0u) << msg;
    EXPECT_NE(msg.find("'" + path("no/such/dir") + "' exists and is writable"), std::string::npos) << msg;
  }
  EXPECT_TRUE(dir_entries().empty());
}

TEST_F(FileIoTest, CommitTwiceIsABug) {
  AtomicFileWriter out(path("f.bin"), "file_io_test");
  out.commit();
  EXPECT_THROW(out.commit(), InternalError);
  EXPECT_THROW(out.write("x", 1), InternalError);
  EXPECT_EQ(read_bytes(path("f.bin")), "");
}

TEST_F(FileIoTest, MapsAnEmptyFile) {
  const std::string p = path("empty.bin");
  write_bytes(p, "");
  const MappedFile m = MappedFile::open(p, "file_io_test");
  EXPECT_EQ(m.size(), 0u);
  EXPECT_EQ(m.data(), nullptr);
  EXPECT_EQ(m.path(), p);
}

TEST_F(FileIoTest, MapsANonEmptyFileAndTheMappingOutlivesAReplace) {
  const std::string p = path("g.bin");
  std::string bytes(10000, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 7 + 3);
  write_bytes(p, bytes);
  MappedFile m = MappedFile::open(p, "file_io_test");
  ASSERT_EQ(m.size(), bytes.size());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(m.data()), m.size()), bytes);

  write_atomic(p, "replaced");  // MAP_PRIVATE of the old inode: still the old bytes
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(m.data()), m.size()), bytes);

  const uint8_t* data = m.data();
  MappedFile moved = std::move(m);
  EXPECT_EQ(moved.data(), data);
  EXPECT_EQ(moved.size(), bytes.size());
  EXPECT_EQ(m.data(), nullptr);  // NOLINT(bugprone-use-after-move): the moved-from state is specified
  EXPECT_EQ(m.size(), 0u);
  moved = MappedFile::open(p, "file_io_test");
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(moved.data()), moved.size()), "replaced");
}

TEST_F(FileIoTest, MappingErrorsNameComponentPathAndRemedy) {
  const std::string missing = path("missing.bin");
  try {
    MappedFile::open(missing, "file_io_test", "a test file");
    ADD_FAILURE() << "expected IoError";
  } catch (const IoError& e) {
    EXPECT_STREQ(e.what(), ("[file_io_test] '" + missing + "': cannot open: No such file or directory. Check the "
                            "path and its permissions; expected a test file.").c_str());
  }
  try {
    MappedFile::open(dir_.string(), "file_io_test", "a test file");
    ADD_FAILURE() << "expected IoError";
  } catch (const IoError& e) {
    EXPECT_STREQ(e.what(), ("[file_io_test] '" + dir_.string() + "': is not a regular file. Pass the path of a test "
                            "file.").c_str());
  }
}

}  // namespace
}  // namespace ds
