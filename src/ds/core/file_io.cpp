// Atomic file replacement and read-only mapping (see file_io.h). The temp file is removed by the writer's
// destructor rather than by a catch block in each caller, so a throw anywhere between construction and commit()
// (including in the caller's own code) cleans up. errno is captured before any close() that could change it.
#include "ds/core/file_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

#include "ds/core/error.h"

namespace ds {
namespace {

std::string errno_text(int err) { return std::strerror(err); }

// Closes a file descriptor on scope exit; for descriptors whose close() result does not matter (read-only files,
// directories).
struct ScopedFd {
  int fd = -1;
  ~ScopedFd() {
    if (fd >= 0) ::close(fd);
  }
};

std::string parent_dir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------- writer

AtomicFileWriter::AtomicFileWriter(const std::string& path, std::string_view component)
    : path_(path), component_(component) {
  static std::atomic<uint64_t> sequence{0};
  tmp_ = fmt::format("{}.tmp.{}.{}", path_, ::getpid(), sequence.fetch_add(1));
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  DS_CHECK_AS(IoError, fd_ >= 0, "[{}] '{}': cannot create the temporary file '{}': {}. Check that the directory "
              "'{}' exists and is writable.", component_, path_, tmp_, errno_text(errno), parent_dir(path_));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void AtomicFileWriter::write(const void* data, size_t n) {
  DS_ASSERT(fd_ >= 0 && !committed_, "AtomicFileWriter::write on '{}' after commit()", path_);
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const size_t chunk = std::min<size_t>(n, size_t{1} << 30);
    const ssize_t w = ::write(fd_, p, chunk);
    if (w < 0 && errno == EINTR) continue;
    DS_CHECK_AS(IoError, w > 0, "[{}] '{}': writing '{}' failed: {}. Check free disk space and quotas; the "
                "previous file (if any) is untouched.", component_, path_, tmp_,
                w < 0 ? errno_text(errno) : std::string("write returned 0"));
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void AtomicFileWriter::commit() {
  DS_ASSERT(fd_ >= 0 && !committed_, "AtomicFileWriter::commit on '{}' called twice", path_);
  DS_CHECK_AS(IoError, ::fsync(fd_) == 0, "[{}] '{}': fsync of '{}' failed: {}. Check the disk and free space; "
              "the previous file (if any) is untouched.", component_, path_, tmp_, errno_text(errno));
  const int rc = ::close(std::exchange(fd_, -1));
  DS_CHECK_AS(IoError, rc == 0, "[{}] '{}': closing '{}' failed: {}. Check the disk and free space; the previous "
              "file (if any) is untouched.", component_, path_, tmp_, errno_text(errno));
  const std::string dir = parent_dir(path_);
  DS_CHECK_AS(IoError, ::rename(tmp_.c_str(), path_.c_str()) == 0, "[{}] '{}': renaming '{}' over it failed: {}. "
              "Check the permissions of '{}'; the previous file (if any) is untouched.", component_, path_, tmp_,
              errno_text(errno), dir);
  committed_ = true;  // the temp name is gone; the destructor must not unlink it

  ScopedFd d;
  d.fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  const bool synced = d.fd >= 0 && ::fsync(d.fd) == 0;
  DS_CHECK_AS(IoError, synced, "[{}] '{}' was written, but fsync of its directory '{}' failed: {}. The rename may "
              "not survive a crash; do not publish the file (e.g. mark a checkpoint as latest) until it is written "
              "again successfully.", component_, path_, dir, errno_text(errno));
}

// ---------------------------------------------------------------------------------------------------- mapping

MappedFile MappedFile::open(const std::string& path, std::string_view component, std::string_view expected) {
  const std::string hint = expected.empty() ? std::string() : fmt::format("; expected {}", expected);
  ScopedFd fd;
  fd.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  DS_CHECK_AS(IoError, fd.fd >= 0, "[{}] '{}': cannot open: {}. Check the path and its permissions{}.", component,
              path, errno_text(errno), hint);
  struct stat st {};
  DS_CHECK_AS(IoError, ::fstat(fd.fd, &st) == 0, "[{}] '{}': cannot stat: {}. Check the path and its permissions.",
              component, path, errno_text(errno));
  DS_CHECK_AS(IoError, S_ISREG(st.st_mode), "[{}] '{}': is not a regular file. Pass the path of {}.", component, path,
              expected.empty() ? std::string_view("a file") : expected);

  MappedFile f;
  f.path_ = path;
  f.size_ = static_cast<size_t>(st.st_size);
  if (f.size_ == 0) return f;  // mmap refuses length 0
  void* map = ::mmap(nullptr, f.size_, PROT_READ, MAP_PRIVATE, fd.fd, 0);
  DS_CHECK_AS(IoError, map != MAP_FAILED, "[{}] '{}': mmap of {} bytes failed: {}. Check the address-space limit "
              "(ulimit -v) and free memory.", component, path, f.size_, errno_text(errno));
  f.map_ = map;
  return f;
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      map_(std::exchange(other.map_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    map_ = std::exchange(other.map_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() { release(); }

void MappedFile::release() noexcept {
  if (map_ != nullptr) ::munmap(map_, size_);
  map_ = nullptr;
  size_ = 0;
}

}  // namespace ds
