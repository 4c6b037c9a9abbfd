// GPT-2 BPE against golden encodings: the 64 r50k_base cases of gpt-tokenizer's TestPlans.txt (tiktoken output)
// and the 46 cases of llama.cpp's ggml-vocab-gpt-2 test (Hugging Face output), plus byte-exact round trips of
// random byte strings, including invalid UTF-8.
#include "ds/data/bpe_tokenizer.h"

#include <gtest/gtest.h>

#include <fstream>
#include <optional>
#include <random>
#include <sstream>

#include "ds/core/error.h"

namespace ds::data {
namespace {

const std::string kSourceDir = DS_SOURCE_DIR;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

BpeTokenizer& gpt2() {
  static BpeTokenizer tok = BpeTokenizer::from_directory(kSourceDir + "/data/tokenizer/gpt2");
  return tok;
}

std::vector<int32_t> parse_ids(std::string_view s) {
  std::vector<int32_t> ids;
  std::string text(s);
  for (char& c : text) {
    if (c == '[' || c == ']' || c == ',') c = ' ';
  }
  std::istringstream in(text);
  int32_t id = 0;
  while (in >> id) ids.push_back(id);
  return ids;
}

struct Case {
  std::string text;
  std::vector<int32_t> ids;
};

// TestPlans.txt: blocks of "EncodingName: <name>", "Sample: <text>", "Encoded: [ids]", blank line.
std::vector<Case> load_test_plans(const std::string& encoding) {
  std::istringstream in(read_file(kSourceDir + "/tests/fixtures/tokenizer/TestPlans.txt"));
  std::vector<Case> cases;
  std::string line;
  std::string name;
  std::optional<std::string> sample;
  while (std::getline(in, line)) {
    if (line.starts_with("EncodingName: ")) {
      name = line.substr(14);
      sample.reset();
    } else if (line.starts_with("Sample:") && name == encoding) {
      sample = line.size() > 8 ? line.substr(8) : std::string();
    } else if (line.starts_with("Encoded:") && name == encoding) {
      EXPECT_TRUE(sample.has_value()) << "Encoded line without Sample";
      cases.push_back(Case{sample.value_or(""), parse_ids(line.substr(8))});
      sample.reset();
    }
  }
  return cases;
}

// ggml-vocab-gpt-2.gguf.inp: cases each followed by "\n__ggml_vocab_test__\n"; .out: one line of ids per case.
std::vector<Case> load_ggml_cases() {
  const std::string base = kSourceDir + "/tests/fixtures/tokenizer/ggml-vocab-gpt-2.gguf";
  const std::string inp = read_file(base + ".inp");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<Case> cases;
  for (size_t pos = 0;;) {
    const size_t next = inp.find(sep, pos);
    if (next == std::string::npos) break;
    cases.push_back(Case{inp.substr(pos, next - pos), {}});
    pos = next + sep.size();
  }
  std::istringstream out(read_file(base + ".out"));
  std::string line;
  size_t i = 0;
  while (std::getline(out, line)) {
    if (i < cases.size()) cases[i].ids = parse_ids(line);
    ++i;
  }
  EXPECT_EQ(i, cases.size()) << "the .out file must have one line per case";
  return cases;
}

TEST(BpeTokenizer, VocabularyShape) {
  EXPECT_EQ(gpt2().vocab_size(), 50257);
  EXPECT_EQ(gpt2().eot_token(), 50256);
  EXPECT_EQ(gpt2().token_bytes(50256), "<|endoftext|>");
  EXPECT_EQ(gpt2().token_bytes(220), " ");
  EXPECT_EQ(gpt2().token_bytes(198), "\n");
}

TEST(BpeTokenizer, TiktokenR50kBaseCases) {
  const auto cases = load_test_plans("r50k_base");
  ASSERT_EQ(cases.size(), 64u);
  for (const auto& c : cases) {
    EXPECT_EQ(gpt2().encode(c.text), c.ids) << "text: '" << c.text << "'";
    EXPECT_EQ(gpt2().decode(c.ids), c.text);
  }
}

TEST(BpeTokenizer, LlamaCppGgmlVocabGpt2Cases) {
  const auto cases = load_ggml_cases();
  ASSERT_EQ(cases.size(), 46u);
  for (const auto& c : cases) {
    EXPECT_EQ(gpt2().encode(c.text), c.ids) << "text: '" << c.text << "'";
    EXPECT_EQ(gpt2().decode(c.ids), c.text);
  }
}

TEST(BpeTokenizer, SameResultWithWarmAndColdCache) {
  const auto cases = load_test_plans("r50k_base");
  BpeTokenizer fresh = gpt2();
  fresh.clear_cache();
  for (int pass = 0; pass < 2; ++pass) {
    for (const auto& c : cases) EXPECT_EQ(fresh.encode(c.text), c.ids) << "pass " << pass;
  }
  EXPECT_GT(fresh.cache_size(), 0u);
}

TEST(BpeTokenizer, EndOfTextIsOrdinaryText) {
  // tiktoken r50k_base encode_ordinary("<|endoftext|>").
  const std::vector<int32_t> golden = {27, 91, 437, 1659, 5239, 91, 29};
  EXPECT_EQ(gpt2().encode("<|endoftext|>"), golden);
  std::vector<int32_t> ids = gpt2().encode("a");
  gpt2().append_eot(ids);
  EXPECT_EQ(ids, (std::vector<int32_t>{64, 50256}));
  EXPECT_EQ(gpt2().decode(ids), "a<|endoftext|>");
}

TEST(BpeTokenizer, PretokenizeFollowsGpt2Regex) {
  std::vector<std::string_view> pieces;
  gpt2().pretokenize("Hello world  !!\n\n x I'll 42", pieces);
  const std::vector<std::string_view> expected = {"Hello", " world", " ", " !!", "\n\n", " x", " I", "'ll", " 42"};
  EXPECT_EQ(pieces, expected);
}

TEST(BpeTokenizer, InvalidUtf8BytesArePiecesOfTheirOwn) {
  std::vector<std::string_view> pieces;
  const std::string text = "a\xff" "b";
  gpt2().pretokenize(text, pieces);
  const std::vector<std::string_view> expected = {"a", "\xff", "b"};
  EXPECT_EQ(pieces, expected);
  // 'a' = 64, 'b' = 65, byte 0xFF is 'ÿ' in GPT-2's byte map = 187.
  EXPECT_EQ(gpt2().encode(text), (std::vector<int32_t>{64, 187, 65}));
}

TEST(BpeTokenizer, RandomBytesRoundTrip) {
  std::mt19937_64 rng(1234);
  // Fragments that stress UTF-8 handling: truncated, overlong, surrogate, out-of-range sequences and valid text.
  const std::vector<std::string> fragments = {
      "\xe2\x82", "\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xf8", "\x80", std::string(1, '\0'),
      "\xf0\x9f\x98\x80", " hello", "'s", "  \n", "\xe4\xb8\x96", "123", "<|endoftext|>", "\t"};
  for (int trial = 0; trial < 2000; ++trial) {
    std::string text;
    const int len = static_cast<int>(rng() % 64);
    for (int i = 0; i < len; ++i) {
      if (rng() % 3 == 0) {
        text += fragments[rng() % fragments.size()];
      } else {
        text.push_back(static_cast<char>(rng() & 0xFF));
      }
    }
    const auto ids = gpt2().encode(text);
    for (const int32_t id : ids) ASSERT_TRUE(id >= 0 && id < 50257);
    ASSERT_EQ(gpt2().decode(ids), text) << "trial " << trial;
    std::vector<std::string_view> pieces;
    gpt2().pretokenize(text, pieces);
    std::string joined;
    for (const auto p : pieces) joined += p;
    ASSERT_EQ(joined, text);
  }
}

TEST(BpeTokenizer, LongPieceRoundTrip) {
  const std::string letters(5000, 'a');
  const auto ids = gpt2().encode(letters);
  EXPECT_EQ(gpt2().decode(ids), letters);
  EXPECT_LT(ids.size(), letters.size() / 2);
}

TEST(BpeTokenizer, DecodeRejectsOutOfRangeIds) {
  const std::vector<int32_t> ids = {50257};
  EXPECT_THROW(gpt2().decode(ids), ds::Error);
  const std::vector<int32_t> negative = {-1};
  EXPECT_THROW(gpt2().decode(negative), ds::Error);
}

TEST(BpeTokenizer, MissingFilesAreIoErrors) {
  const std::string dir = kSourceDir + "/data/tokenizer/gpt2";
  EXPECT_THROW(BpeTokenizer(dir + "/no_such_encoder.json", dir + "/vocab.bpe"), ds::IoError);
  EXPECT_THROW(BpeTokenizer(dir + "/encoder.json", dir + "/no_such_vocab.bpe"), ds::IoError);
  EXPECT_THROW(BpeTokenizer::from_directory(dir + "/missing"), ds::IoError);
  try {
    BpeTokenizer(dir + "/encoder.json", dir + "/no_such_vocab.bpe");
  } catch (const ds::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("no_such_vocab.bpe"), std::string::npos) << e.what();
  }
}

TEST(BpeTokenizer, CorruptFilesAreIoErrors) {
  const std::string dir = kSourceDir + "/data/tokenizer/gpt2";
  const std::string tmp = ::testing::TempDir();
  const std::string bad_json = tmp + "/bad_encoder.json";
  std::ofstream(bad_json) << "{\"a\": 0, ";
  EXPECT_THROW(BpeTokenizer(bad_json, dir + "/vocab.bpe"), ds::IoError);
  const std::string bad_merges = tmp + "/bad_vocab.bpe";
  std::ofstream(bad_merges) << "#version: 0.2\nĠ t\nnot-a-merge-line\n";
  EXPECT_THROW(BpeTokenizer(dir + "/encoder.json", bad_merges), ds::IoError);
}

}  // namespace
}  // namespace ds::data
