// llm.c token shards: byte layout checked against a hand-built file, round trips, and corrupt files as IoError.
#include "ds/data/token_shard.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "ds/core/error.h"

namespace ds::data {
namespace {

std::string temp_path(const std::string& name) {
  const auto dir = std::filesystem::path(::testing::TempDir()) / "ds_token_shard_test";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// An llm.c shard built by hand: 256 int32 header then uint16 tokens, little-endian.
std::string llmc_file(int32_t magic, int32_t version, int32_t count, const std::vector<uint16_t>& tokens) {
  std::string bytes(1024, '\0');
  const int32_t header[3] = {magic, version, count};
  std::memcpy(bytes.data(), header, sizeof(header));
  bytes.append(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
  return bytes;
}

TEST(TokenShard, WritesLlmcLayout) {
  const std::string path = temp_path("layout.bin");
  const std::vector<int32_t> tokens = {50256, 0, 1, 65535, 15496};
  write_token_shard(path, std::span<const int32_t>(tokens));
  EXPECT_EQ(read_bytes(path), llmc_file(20240520, 1, 5, {50256, 0, 1, 65535, 15496}));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp." + std::to_string(::getpid())));
}

TEST(TokenShard, ReadsLlmcFile) {
  const std::string path = temp_path("handmade.bin");
  write_bytes(path, llmc_file(20240520, 1, 3, {7, 8, 9}));
  EXPECT_EQ(read_token_shard(path), (std::vector<uint16_t>{7, 8, 9}));
  const TokenShard shard(path);
  ASSERT_EQ(shard.size(), 3u);
  EXPECT_EQ(shard.tokens()[2], 9);
}

TEST(TokenShard, RoundTripUint16AndEmpty) {
  const std::string path = temp_path("roundtrip.bin");
  std::vector<uint16_t> tokens(3'000'000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>((i * 2654435761u) >> 7);
  write_token_shard(path, std::span<const uint16_t>(tokens));
  EXPECT_EQ(read_token_shard(path), tokens);
  EXPECT_EQ(std::filesystem::file_size(path), 1024 + 2 * tokens.size());

  const std::string empty = temp_path("empty.bin");
  write_token_shard(empty, std::span<const uint16_t>());
  EXPECT_TRUE(read_token_shard(empty).empty());
}

TEST(TokenShard, OverwriteReplacesAtomically) {
  const std::string path = temp_path("overwrite.bin");
  write_token_shard(path, std::vector<uint16_t>{1, 2, 3});
  const TokenShard old_view(path);  // a mapping taken before the rename keeps the old contents
  write_token_shard(path, std::vector<uint16_t>{4, 5});
  EXPECT_EQ(read_token_shard(path), (std::vector<uint16_t>{4, 5}));
  EXPECT_EQ(old_view.size(), 3u);
  EXPECT_EQ(old_view.tokens()[0], 1);
}

TEST(TokenShard, RejectsTokensThatDoNotFitUint16) {
  const std::string path = temp_path("too_big.bin");
  std::filesystem::remove(path);
  EXPECT_THROW(write_token_shard(path, std::vector<int32_t>{1, 65536}), ds::ConfigError);
  EXPECT_THROW(write_token_shard(path, std::vector<int32_t>{-1}), ds::ConfigError);
  EXPECT_FALSE(std::filesystem::exists(path));
}

void expect_io_error(const std::string& path, const std::string& needle) {
  try {
    read_token_shard(path);
    ADD_FAILURE() << "expected IoError for " << path;
  } catch (const ds::IoError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  }
}

TEST(TokenShard, CorruptFilesAreIoErrors) {
  const std::string magic = temp_path("bad_magic.bin");
  write_bytes(magic, llmc_file(20240801, 1, 2, {1, 2}));
  expect_io_error(magic, "20240801");

  const std::string version = temp_path("bad_version.bin");
  write_bytes(version, llmc_file(20240520, 2, 2, {1, 2}));
  expect_io_error(version, "version 2");

  const std::string truncated = temp_path("truncated.bin");
  write_bytes(truncated, llmc_file(20240520, 1, 4, {1, 2, 3}));
  expect_io_error(truncated, "truncated");

  const std::string trailing = temp_path("trailing.bin");
  write_bytes(trailing, llmc_file(20240520, 1, 1, {1, 2}));
  expect_io_error(trailing, "trailing");

  const std::string short_header = temp_path("short_header.bin");
  write_bytes(short_header, std::string(100, '\0'));
  expect_io_error(short_header, "header");

  expect_io_error(temp_path("does_not_exist.bin"), "cannot open");
}

}  // namespace
}  // namespace ds::data
