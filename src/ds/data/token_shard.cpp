// llm.c .bin token shards: atomic writer, validating reader and memory-mapped view.
// The header is written and read as host-order int32 and tokens as host-order uint16; every supported target is
// little-endian, which is what llm.c's Python writers produce, so the files are interchangeable with llm.c's.
// The temp-file/rename and mmap mechanics are ds/core/file_io.h's; this file owns only the layout and its checks.
#include "ds/data/token_shard.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>

#include "ds/core/error.h"
#include "ds/core/file_io.h"

namespace ds::data {
namespace {

// fill(offset, buffer) writes tokens [offset, offset + buffer.size()) into buffer.
template <typename Fill>
void write_shard(const std::string& path, size_t count, Fill&& fill) {
  DS_CHECK_AS(ConfigError, count <= static_cast<size_t>(std::numeric_limits<int32_t>::max()),
              "[token_shard] '{}': {} tokens do not fit the int32 count of an llm.c header; split the data into "
              "several shards", path, count);
  AtomicFileWriter out(path, "token_shard");
  std::array<int32_t, kTokenShardHeaderInts> header{};
  header[0] = kTokenShardMagic;
  header[1] = kTokenShardVersion;
  header[2] = static_cast<int32_t>(count);
  out.write(header.data(), kTokenShardHeaderBytes);
  std::vector<uint16_t> buffer(std::min<size_t>(count, size_t{1} << 20));
  for (size_t offset = 0; offset < count; offset += buffer.size()) {
    const size_t n = std::min(buffer.size(), count - offset);
    fill(offset, std::span<uint16_t>(buffer.data(), n));
    out.write(buffer.data(), n * sizeof(uint16_t));
  }
  out.commit();
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

TokenShard::TokenShard(const std::string& path)
    : file_(MappedFile::open(path, "token_shard", "an llm.c token shard (.bin), e.g. from 'dspeed data prepare'")) {
  const size_t bytes = file_.size();
  DS_CHECK_AS(IoError, bytes >= kTokenShardHeaderBytes,
              "[token_shard] '{}' is truncated: {} bytes, expected at least the {}-byte header; regenerate it with "
              "'dspeed data prepare'", path, bytes, kTokenShardHeaderBytes);
  const auto* header = reinterpret_cast<const int32_t*>(file_.data());
  DS_CHECK_AS(IoError, header[0] == kTokenShardMagic,
              "[token_shard] '{}' has magic {}, expected {} (llm.c GPT-2 token shard); it is not a token shard or "
              "uses another layout", path, header[0], kTokenShardMagic);
  DS_CHECK_AS(IoError, header[1] == kTokenShardVersion,
              "[token_shard] '{}' has version {}, expected {} (uint16 tokens)", path, header[1], kTokenShardVersion);
  DS_CHECK_AS(IoError, header[2] >= 0, "[token_shard] '{}' has a negative token count {} in its header", path,
              header[2]);
  const auto count = static_cast<size_t>(header[2]);
  const size_t expected = kTokenShardHeaderBytes + count * sizeof(uint16_t);
  DS_CHECK_AS(IoError, bytes == expected,
              "[token_shard] '{}' is {} bytes, expected {} for the {} tokens its header declares ({}); "
              "regenerate it with 'dspeed data prepare'", path, bytes, expected, count,
              bytes < expected ? "file truncated" : "trailing bytes");
}

}  // namespace ds::data
