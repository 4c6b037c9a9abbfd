// prepare_dataset: list documents, split train/val, encode each document behind an end-of-text token, write shards.
// Encoding is single-threaded on purpose: the tokenizer runs at tens of MB/s, far above the corpora bundled here,
// and one thread keeps the output order trivially deterministic. Tokens are collected as uint16 to halve memory.
#include "ds/data/prepare.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <system_error>
#include <utility>

#include "ds/core/error.h"
#include "ds/core/stats.h"
#include "ds/data/bpe_tokenizer.h"
#include "ds/data/token_shard.h"

namespace ds::data {
namespace {

namespace fs = std::filesystem;

std::string read_document(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  DS_CHECK_AS(IoError, in.good(), "[prepare] cannot open document '{}'; check that it exists and is readable", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  DS_CHECK_AS(IoError, !in.bad(), "[prepare] reading document '{}' failed", path);
  return std::move(ss).str();
}

// Marks which documents go to validation.
std::vector<bool> select_validation(const std::vector<std::string>& docs, const PrepareOptions& options) {
  std::vector<bool> val(docs.size(), false);
  if (!options.val_pattern.empty()) {
    std::regex pattern;
    try {
      pattern = std::regex(options.val_pattern, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      DS_THROW(ConfigError, "[prepare] validation pattern '{}' is not a valid regex ({})", options.val_pattern,
               e.what());
    }
    for (size_t i = 0; i < docs.size(); ++i) {
      val[i] = std::regex_search(fs::path(docs[i]).filename().string(), pattern);
    }
    return val;
  }
  DS_CHECK_AS(ConfigError, options.val_fraction > 0.0 && options.val_fraction < 1.0,
              "[prepare] no validation split: give a file-name pattern or a fraction in (0, 1), found fraction {}",
              options.val_fraction);
  const auto n = static_cast<int64_t>(docs.size());
  const int64_t held_out =
      std::clamp<int64_t>(std::llround(options.val_fraction * static_cast<double>(n)), 1, n);
  for (int64_t i = n - held_out; i < n; ++i) val[static_cast<size_t>(i)] = true;
  return val;
}

}  // namespace

std::vector<std::string> list_documents(const std::vector<std::string>& inputs) {
  std::vector<std::string> docs;
  for (const auto& input : inputs) {
    const fs::path p(input);
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<std::string> files;
      for (const auto& entry : fs::directory_iterator(p)) {
        const std::string name = entry.path().filename().string();
        if (!name.starts_with(".") && entry.is_regular_file()) files.push_back(entry.path().string());
      }
      std::sort(files.begin(), files.end());
      docs.insert(docs.end(), files.begin(), files.end());
    } else {
      DS_CHECK_AS(IoError, fs::is_regular_file(p, ec),
                  "[prepare] input '{}' is neither a file nor a directory; pass text files or directories of them",
                  input);
      docs.push_back(input);
    }
  }
  return docs;
}

PrepareSummary prepare_dataset(const PrepareOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  DS_CHECK_AS(ConfigError, !options.inputs.empty(), "[prepare] no inputs given; pass text files or directories");
  DS_CHECK_AS(ConfigError, !options.out_dir.empty(), "[prepare] no output directory given");
  const std::vector<std::string> docs = list_documents(options.inputs);
  DS_CHECK_AS(ConfigError, !docs.empty(), "[prepare] the inputs hold no documents (first input: '{}')",
              options.inputs.front());
  const std::vector<bool> is_val = select_validation(docs, options);
  const auto n_val = static_cast<int64_t>(std::count(is_val.begin(), is_val.end(), true));
  const auto n_train = static_cast<int64_t>(docs.size()) - n_val;
  DS_CHECK_AS(ConfigError, n_train > 0 && n_val > 0,
              "[prepare] the validation selector ({}) leaves {} training and {} validation documents out of {}; "
              "both must be non-empty",
              options.val_pattern.empty() ? fmt::format("fraction {}", options.val_fraction)
                                          : fmt::format("pattern '{}'", options.val_pattern),
              n_train, n_val, docs.size());

  BpeTokenizer tokenizer = BpeTokenizer::from_directory(options.tokenizer_dir);
  DS_CHECK_AS(ConfigError, tokenizer.vocab_size() <= 65536,
              "[prepare] the tokenizer has {} tokens; llm.c shards store uint16 ids, so at most 65536",
              tokenizer.vocab_size());

  PrepareSummary summary;
  std::vector<uint16_t> train, val;
  std::vector<int32_t> ids;
  for (size_t i = 0; i < docs.size(); ++i) {
    const std::string text = read_document(docs[i]);
    ids.clear();
    tokenizer.append_eot(ids);
    tokenizer.encode_into(text, ids);
    std::vector<uint16_t>& out = is_val[i] ? val : train;
    out.insert(out.end(), ids.begin(), ids.end());  // ids < vocab_size <= 65536
    (is_val[i] ? summary.val_bytes : summary.train_bytes) += static_cast<int64_t>(text.size());
  }

  std::error_code ec;
  fs::create_directories(options.out_dir, ec);
  DS_CHECK_AS(IoError, !ec, "[prepare] cannot create output directory '{}': {}", options.out_dir, ec.message());
  summary.train_path = (fs::path(options.out_dir) / "train.bin").string();
  summary.val_path = (fs::path(options.out_dir) / "val.bin").string();
  write_token_shard(summary.train_path, std::span<const uint16_t>(train));
  write_token_shard(summary.val_path, std::span<const uint16_t>(val));
  summary.train_documents = n_train;
  summary.val_documents = n_val;
  summary.train_tokens = static_cast<int64_t>(train.size());
  summary.val_tokens = static_cast<int64_t>(val.size());
  summary.seconds = seconds_since(start);
  return summary;
}

}  // namespace ds::data
