// Single-threaded GPT-2 BPE encoding throughput over the bundled State of the Union corpus.
// Each run starts from a cold word cache (a fresh copy of the loaded tokenizer), so the figure includes BPE work;
// the reference beside it is PCRE2 pre-tokenisation alone, the bound encoding cannot beat. Median of 3 runs.
// Usage: bm_tokenizer [corpus_dir=data/corpus/sotu] [tokenizer_dir=data/tokenizer/gpt2]
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "ds/core/error.h"
#include "ds/core/stats.h"
#include "ds/data/bpe_tokenizer.h"

namespace {

std::string join(const std::vector<double>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += fmt::format("{}{:.2f}", i ? "," : "", v[i]);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string corpus_dir = argc > 1 ? argv[1] : "data/corpus/sotu";
    const std::string tokenizer_dir = argc > 2 ? argv[2] : "data/tokenizer/gpt2";
    DS_CHECK_AS(ds::IoError, std::filesystem::is_directory(corpus_dir),
                "[bm_tokenizer] corpus directory '{}' not found; run from the repository root or pass the path",
                corpus_dir);
    std::vector<std::filesystem::path> paths;
    for (const auto& entry : std::filesystem::directory_iterator(corpus_dir)) {
      if (entry.is_regular_file()) paths.push_back(entry.path());
    }
    std::sort(paths.begin(), paths.end());
    std::vector<std::string> docs;
    size_t bytes = 0;
    for (const auto& p : paths) {
      std::ifstream in(p, std::ios::binary);
      std::ostringstream ss;
      ss << in.rdbuf();
      docs.push_back(std::move(ss).str());
      bytes += docs.back().size();
    }
    const ds::data::BpeTokenizer loaded = ds::data::BpeTokenizer::from_directory(tokenizer_dir);

    constexpr int kRuns = 3;
    std::vector<double> encode_mb_s, tokens_s, pretok_mb_s;
    size_t tokens = 0;
    std::vector<int32_t> ids;
    std::vector<std::string_view> pieces;
    for (int run = 0; run < kRuns; ++run) {
      ds::data::BpeTokenizer tok = loaded;  // cold cache each run
      ids.clear();
      auto start = std::chrono::steady_clock::now();
      for (const auto& d : docs) tok.encode_into(d, ids);
      const double t_encode = ds::seconds_since(start);
      tokens = ids.size();
      encode_mb_s.push_back(static_cast<double>(bytes) / 1e6 / t_encode);
      tokens_s.push_back(static_cast<double>(tokens) / t_encode);

      start = std::chrono::steady_clock::now();
      size_t n_pieces = 0;
      for (const auto& d : docs) {
        pieces.clear();
        tok.pretokenize(d, pieces);
        n_pieces += pieces.size();
      }
      const double t_pretok = ds::seconds_since(start);
      pretok_mb_s.push_back(static_cast<double>(bytes) / 1e6 / t_pretok);
      if (n_pieces == 0) return 1;
    }
    const double enc = ds::median(encode_mb_s);
    const double ref = ds::median(pretok_mb_s);
    fmt::print(
        "{{\"bench\":\"tokenizer_encode\",\"corpus\":\"{}\",\"documents\":{},\"bytes\":{},\"tokens\":{},"
        "\"threads\":1,\"runs\":{},\"encode_mb_s\":[{}],\"median_encode_mb_s\":{:.2f},"
        "\"median_tokens_s\":{:.0f},\"median_pretokenize_mb_s\":{:.2f},\"encode_over_pretokenize\":{:.3f},"
        "\"target_mb_s\":5.0}}\n",
        corpus_dir, docs.size(), bytes, tokens, kRuns, join(encode_mb_s), enc, ds::median(tokens_s), ref, enc / ref);
    return 0;
  } catch (const ds::Error& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 1;
  }
}
