// llm.c .bin token shards: atomic writer, validating reader and memory-mapped view.
// The header is written and read as host-order int32 and tokens as host-order uint16; every supported target is
// little-endian, which is what llm.c's Python writers produce, so the files are interchangeable with llm.c's.
#include "ds/data/token_shard.h"

#include <atomic>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>

#include "ds/core/error.h"

namespace ds::data {
namespace {

std::string errno_text() { return std::strerror(errno); }

// Owns a file descriptor; closes it on scope exit (errors on close of a read-only fd are irrelevant).
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

void write_all(int fd, const void* data, size_t bytes, const std::string& path) {
  const auto* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    DS_CHECK_AS(IoError, n > 0, "[token_shard] writing '{}' failed: {}; check free space and permissions", path,
                n < 0 ? errno_text() : std::string("wrote 0 bytes"));
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

// fill(offset, buffer) writes tokens [offset, offset + buffer.size()) into buffer.
template <typename Fill>
void write_shard(const std::string& path, size_t count, Fill&& fill) {
  DS_CHECK_AS(ConfigError, count <= static_cast<size_t>(std::numeric_limits<int32_t>::max()),
              "[token_shard] '{}': {} tokens do not fit the int32 count of an llm.c header; split the data into "
              "several shards", path, count);
  const std::filesystem::path target(path);
  const std::filesystem::path dir = target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
  // pid plus a process-wide sequence number: two threads (local-backend ranks) never share a temp file.
  static std::atomic<uint64_t> sequence{0};
  const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(sequence++);
  Fd file;
  file.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  DS_CHECK_AS(IoError, file.fd >= 0, "[token_shard] cannot create '{}': {}; check that directory '{}' exists and "
              "is writable", tmp, errno_text(), dir.string());
  try {
    std::array<int32_t, kTokenShardHeaderInts> header{};
    header[0] = kTokenShardMagic;
    header[1] = kTokenShardVersion;
    header[2] = static_cast<int32_t>(count);
    write_all(file.fd, header.data(), kTokenShardHeaderBytes, tmp);
    std::vector<uint16_t> buffer(std::min<size_t>(count, size_t{1} << 20));
    for (size_t offset = 0; offset < count; offset += buffer.size()) {
      const size_t n = std::min(buffer.size(), count - offset);
      fill(offset, std::span<uint16_t>(buffer.data(), n));
      write_all(file.fd, buffer.data(), n * sizeof(uint16_t), tmp);
    }
    DS_CHECK_AS(IoError, ::fsync(file.fd) == 0, "[token_shard] fsync of '{}' failed: {}", tmp, errno_text());
    const int fd = file.fd;
    file.fd = -1;
    DS_CHECK_AS(IoError, ::close(fd) == 0, "[token_shard] closing '{}' failed: {}", tmp, errno_text());
    DS_CHECK_AS(IoError, ::rename(tmp.c_str(), path.c_str()) == 0, "[token_shard] renaming '{}' to '{}' failed: {}",
                tmp, path, errno_text());
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename durable; a failure here leaves a complete file, so it is not an error.
  Fd d;
  d.fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d.fd >= 0) ::fsync(d.fd);
}

}  // namespace

void write_token_shard(const std::string& path, std::span<const uint16_t> tokens) {
  write_shard(path, tokens.size(), [&](size_t offset, std::span<uint16_t> out) {
    std::memcpy(out.data(), tokens.data() + offset, out.size() * sizeof(uint16_t));
  });
}

void write_token_shard(const std::string& path, std::span<const int32_t> tokens) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    DS_CHECK_AS(ConfigError, tokens[i] >= 0 && tokens[i] <= 65535,
                "[token_shard] '{}': token {} at position {} does not fit uint16; an llm.c shard holds ids in "
                "[0, 65535], so the vocabulary must have at most 65536 tokens", path, tokens[i], i);
  }
  write_shard(path, tokens.size(), [&](size_t offset, std::span<uint16_t> out) {
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint16_t>(tokens[offset + i]);
  });
}

std::vector<uint16_t> read_token_shard(const std::string& path) {
  const TokenShard shard(path);
  return std::vector<uint16_t>(shard.tokens().begin(), shard.tokens().end());
}

TokenShard::TokenShard(const std::string& path) : path_(path) {
  Fd file;
  file.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  DS_CHECK_AS(IoError, file.fd >= 0, "[token_shard] cannot open '{}': {}; expected an llm.c token shard (.bin), "
              "e.g. from 'dspeed data prepare'", path, errno_text());
  struct stat st {};
  DS_CHECK_AS(IoError, ::fstat(file.fd, &st) == 0, "[token_shard] cannot stat '{}': {}", path, errno_text());
  DS_CHECK_AS(IoError, S_ISREG(st.st_mode), "[token_shard] '{}' is not a regular file; expected a token shard",
              path);
  const auto bytes = static_cast<size_t>(st.st_size);
  DS_CHECK_AS(IoError, bytes >= kTokenShardHeaderBytes,
              "[token_shard] '{}' is truncated: {} bytes, expected at least the {}-byte header; regenerate it with "
              "'dspeed data prepare'", path, bytes, kTokenShardHeaderBytes);
  void* map = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, file.fd, 0);
  DS_CHECK_AS(IoError, map != MAP_FAILED, "[token_shard] cannot map '{}' ({} bytes): {}", path, bytes, errno_text());
  map_ = map;
  map_bytes_ = bytes;
  try {
    const auto* header = static_cast<const int32_t*>(map_);
    DS_CHECK_AS(IoError, header[0] == kTokenShardMagic,
                "[token_shard] '{}' has magic {}, expected {} (llm.c GPT-2 token shard); it is not a token shard or "
                "uses another layout", path, header[0], kTokenShardMagic);
    DS_CHECK_AS(IoError, header[1] == kTokenShardVersion,
                "[token_shard] '{}' has version {}, expected {} (uint16 tokens)", path, header[1],
                kTokenShardVersion);
    DS_CHECK_AS(IoError, header[2] >= 0, "[token_shard] '{}' has a negative token count {} in its header", path,
                header[2]);
    const auto count = static_cast<size_t>(header[2]);
    const size_t expected = kTokenShardHeaderBytes + count * sizeof(uint16_t);
    DS_CHECK_AS(IoError, bytes == expected,
                "[token_shard] '{}' is {} bytes, expected {} for the {} tokens its header declares ({}); "
                "regenerate it with 'dspeed data prepare'", path, bytes, expected, count,
                bytes < expected ? "file truncated" : "trailing bytes");
    tokens_ = reinterpret_cast<const uint16_t*>(static_cast<const char*>(map_) + kTokenShardHeaderBytes);
    size_ = count;
  } catch (...) {
    release();
    throw;
  }
}

TokenShard::TokenShard(TokenShard&& other) noexcept
    : path_(std::move(other.path_)),
      map_(other.map_),
      map_bytes_(other.map_bytes_),
      tokens_(other.tokens_),
      size_(other.size_) {
  other.map_ = nullptr;
  other.map_bytes_ = 0;
  other.tokens_ = nullptr;
  other.size_ = 0;
}

TokenShard& TokenShard::operator=(TokenShard&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    map_ = other.map_;
    map_bytes_ = other.map_bytes_;
    tokens_ = other.tokens_;
    size_ = other.size_;
    other.map_ = nullptr;
    other.map_bytes_ = 0;
    other.tokens_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

TokenShard::~TokenShard() { release(); }

void TokenShard::release() noexcept {
  if (map_ != nullptr) ::munmap(map_, map_bytes_);
  map_ = nullptr;
  map_bytes_ = 0;
  tokens_ = nullptr;
  size_ = 0;
}

}  // namespace ds::data
