// Token shards in llm.c's .bin layout: 256 little-endian int32 header (magic 20240520, version 1, token count,
// rest zero) followed by the tokens as uint16. Writes are atomic (temp file, fsync, rename, fsync directory);
// reads memory-map the file and validate the header and the size against the token count before exposing tokens.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "ds/core/file_io.h"

namespace ds::data {

inline constexpr int32_t kTokenShardMagic = 20240520;
inline constexpr int32_t kTokenShardVersion = 1;
inline constexpr size_t kTokenShardHeaderInts = 256;
inline constexpr size_t kTokenShardHeaderBytes = kTokenShardHeaderInts * sizeof(int32_t);

// Writes tokens to path atomically. int32 tokens must lie in [0, 65535] (ConfigError otherwise);
// I/O failures throw IoError naming the file.
void write_token_shard(const std::string& path, std::span<const uint16_t> tokens);
void write_token_shard(const std::string& path, std::span<const int32_t> tokens);

// Reads a whole shard into memory. IoError if the file is missing, has a wrong magic or version, or its size does
// not match the token count in the header.
std::vector<uint16_t> read_token_shard(const std::string& path);

// A read-only memory-mapped shard, validated on open. Move-only; unmaps in the destructor.
class TokenShard {
 public:
  explicit TokenShard(const std::string& path);

  // The tokens follow the header; the constructor checked that the file holds exactly as many as the header says.
  // A moved-from shard maps nothing and holds no tokens.
  std::span<const uint16_t> tokens() const {
    if (file_.data() == nullptr) return {};
    return {reinterpret_cast<const uint16_t*>(file_.data() + kTokenShardHeaderBytes), size()};
  }
  size_t size() const {
    return file_.data() == nullptr ? 0 : (file_.size() - kTokenShardHeaderBytes) / sizeof(uint16_t);
  }
  const std::string& path() const { return file_.path(); }

 private:
  MappedFile file_;  // move-only, so TokenShard is too
};

}  // namespace ds::data
