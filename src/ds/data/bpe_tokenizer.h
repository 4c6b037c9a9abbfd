// GPT-2 byte-level BPE tokenizer (encoder.json + vocab.bpe), pre-tokenised with PCRE2 using GPT-2's regex.
// Tables (vocabulary, merge ranks, compiled regex) are immutable and shared between copies; each instance owns a
// per-word cache and PCRE2 match data, so encode() is non-const: use one instance per thread (copies are cheap).
// Bytes that are not valid UTF-8 never match the regex (PCRE2_MATCH_INVALID_UTF); each such run is BPE-encoded as
// its own piece, so decode(encode(bytes)) == bytes for any input. "<|endoftext|>" in text is ordinary text.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ds::data {

class BpeTokenizer {
 public:
  // Loads GPT-2's encoder.json (token string -> id) and vocab.bpe (merges, one "a b" pair a line, by rank).
  // Throws IoError naming the file when one is missing or not in the expected format.
  BpeTokenizer(const std::string& encoder_json_path, const std::string& vocab_bpe_path);
  // Loads <dir>/encoder.json and <dir>/vocab.bpe.
  static BpeTokenizer from_directory(const std::string& dir);

  // Ordinary encoding (tiktoken's encode_ordinary): special-token text is encoded as plain text.
  std::vector<int32_t> encode(std::string_view text);
  // Appends the ids of text to out (no EOT).
  void encode_into(std::string_view text, std::vector<int32_t>& out);
  // Appends the end-of-text token; documents are separated by it (prepare_dataset puts one before each).
  void append_eot(std::vector<int32_t>& out) const { out.push_back(eot_); }

  // Concatenated bytes of the tokens (may be invalid UTF-8 if the ids cut a character). Throws ds::Error on an id
  // outside [0, vocab_size()).
  std::string decode(std::span<const int32_t> ids) const;
  // The bytes of one token; throws ds::Error on an id out of range.
  std::string_view token_bytes(int32_t id) const;

  // GPT-2 pre-tokenisation: the pieces BPE runs on, views into text, in order, covering text exactly.
  void pretokenize(std::string_view text, std::vector<std::string_view>& pieces);

  int32_t eot_token() const { return eot_; }
  int32_t vocab_size() const;
  // Number of pieces held in this instance's word cache (for tests and benchmarks).
  size_t cache_size() const { return cache_.size(); }
  void clear_cache() { cache_.clear(); cache_ids_.clear(); }

  struct Tables;  // vocabulary, merge ranks, compiled regex (defined in the .cpp)
  struct Matcher;  // per-instance PCRE2 match data

  BpeTokenizer(const BpeTokenizer& other);
  BpeTokenizer& operator=(const BpeTokenizer& other);
  BpeTokenizer(BpeTokenizer&&) noexcept;
  BpeTokenizer& operator=(BpeTokenizer&&) noexcept;
  ~BpeTokenizer();

 private:
  explicit BpeTokenizer(std::shared_ptr<const Tables> tables);
  // Runs fn(begin, end, matched) over the pieces of text; matched == false for a run of invalid UTF-8.
  template <typename Fn>
  void for_each_piece(std::string_view text, Fn&& fn);
  void encode_piece(std::string_view piece, std::vector<int32_t>& out);
  void bpe(std::string_view piece, std::vector<int32_t>& out) const;

  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };
  struct CacheEntry {
    uint32_t offset;  // into cache_ids_
    uint32_t count;
  };

  std::shared_ptr<const Tables> tables_;
  std::unique_ptr<Matcher> matcher_;
  int32_t eot_ = 0;
  std::unordered_map<std::string, CacheEntry, StringHash, std::equal_to<>> cache_;
  std::vector<int32_t> cache_ids_;
};

}  // namespace ds::data
