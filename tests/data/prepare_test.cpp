// prepare_dataset on a tiny corpus whose documents have known GPT-2 encodings (from the golden test vectors):
// file-name and fraction splits, EOT before each document, sorted directory order, and empty-split errors.
#include "ds/data/prepare.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "ds/core/error.h"
#include "ds/data/token_shard.h"

namespace ds::data {
namespace {

namespace fs = std::filesystem;

const std::string kTokenizerDir = std::string(DS_SOURCE_DIR) + "/data/tokenizer/gpt2";

// Golden ids: "hello" [31373], "a" [64], "Hello world" [15496, 995], "1" [16]; EOT is 50256.
fs::path make_corpus(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / "ds_prepare_test" / name;
  fs::remove_all(dir);
  fs::create_directories(dir / "docs");
  // Written out of order on purpose: processing must follow sorted names.
  std::ofstream(dir / "docs" / "2011_d.txt") << "1";
  std::ofstream(dir / "docs" / "2008_a.txt") << "hello";
  std::ofstream(dir / "docs" / "2010_c.txt") << "Hello world";
  std::ofstream(dir / "docs" / "2009_b.txt") << "a";
  std::ofstream(dir / "docs" / ".hidden") << "ignored";
  return dir;
}

TEST(Prepare, FileNameSplit) {
  const fs::path dir = make_corpus("pattern");
  PrepareOptions options;
  options.inputs = {(dir / "docs").string()};
  options.out_dir = (dir / "out").string();
  options.tokenizer_dir = kTokenizerDir;
  options.val_pattern = "^20(1[0-9]|2[01])_";
  const PrepareSummary s = prepare_dataset(options);
  EXPECT_EQ(read_token_shard((dir / "out" / "train.bin").string()),
            (std::vector<uint16_t>{50256, 31373, 50256, 64}));
  EXPECT_EQ(read_token_shard((dir / "out" / "val.bin").string()),
            (std::vector<uint16_t>{50256, 15496, 995, 50256, 16}));
  EXPECT_EQ(s.train_documents, 2);
  EXPECT_EQ(s.val_documents, 2);
  EXPECT_EQ(s.train_tokens, 4);
  EXPECT_EQ(s.val_tokens, 5);
  EXPECT_EQ(s.train_bytes, 6);
  EXPECT_EQ(s.val_bytes, 12);
  EXPECT_EQ(s.train_path, (dir / "out" / "train.bin").string());
}

TEST(Prepare, FractionSplitHoldsOutTheLastDocuments) {
  const fs::path dir = make_corpus("fraction");
  PrepareOptions options;
  // A file then a directory: the file comes first, then the directory's files in name order.
  options.inputs = {(dir / "docs" / "2011_d.txt").string(), (dir / "docs").string()};
  options.out_dir = (dir / "out").string();
  options.tokenizer_dir = kTokenizerDir;
  options.val_fraction = 0.2;  // 5 documents -> 1 held out: the last one, 2011_d.txt again
  const PrepareSummary s = prepare_dataset(options);
  EXPECT_EQ(read_token_shard(s.train_path),
            (std::vector<uint16_t>{50256, 16, 50256, 31373, 50256, 64, 50256, 15496, 995}));
  EXPECT_EQ(read_token_shard(s.val_path), (std::vector<uint16_t>{50256, 16}));
  EXPECT_EQ(s.val_documents, 1);
}

TEST(Prepare, ListsDirectoriesInSortedOrder) {
  const fs::path dir = make_corpus("list");
  const auto docs = list_documents({(dir / "docs").string()});
  ASSERT_EQ(docs.size(), 4u);
  EXPECT_EQ(fs::path(docs[0]).filename(), "2008_a.txt");
  EXPECT_EQ(fs::path(docs[3]).filename(), "2011_d.txt");
  EXPECT_THROW(list_documents({(dir / "nope").string()}), ds::IoError);
}

TEST(Prepare, EmptySplitsAreConfigErrors) {
  const fs::path dir = make_corpus("empty");
  PrepareOptions options;
  options.inputs = {(dir / "docs").string()};
  options.out_dir = (dir / "out").string();
  options.tokenizer_dir = kTokenizerDir;
  options.val_pattern = "^1999_";  // no validation documents
  EXPECT_THROW(prepare_dataset(options), ds::ConfigError);
  options.val_pattern = "^20";  // no training documents
  EXPECT_THROW(prepare_dataset(options), ds::ConfigError);
  options.val_pattern = "(";  // not a regex
  EXPECT_THROW(prepare_dataset(options), ds::ConfigError);
  options.val_pattern.clear();
  options.val_fraction = 0.0;  // no selector
  EXPECT_THROW(prepare_dataset(options), ds::ConfigError);
  EXPECT_FALSE(fs::exists(dir / "out" / "train.bin"));
}

}  // namespace
}  // namespace ds::data
