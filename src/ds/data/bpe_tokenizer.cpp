// GPT-2 byte-level BPE: loading the tables, PCRE2 pre-tokenisation and the per-word merge loop.
// Merges are applied by rank with a min-heap over a linked list of symbols (O(n log n) per word), ties broken by
// position, which reproduces GPT-2's "merge every occurrence of the best bigram, left to right". Pair ranks live
// in a flat open-addressing table keyed by (left id, right id); encoded words are cached per instance.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "ds/data/bpe_tokenizer.h"

#include <pcre2.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>

#include "ds/core/error.h"
#include "ds/core/json_input.h"

namespace ds::data {
namespace {

// GPT-2's pre-tokenisation pattern, exactly as in encoder.py.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kEndOfText = "<|endoftext|>";
// Word cache bounds: pieces longer than this are not cached, and the cache is cleared when it grows past the
// entry limit, so memory stays bounded on adversarial input.
constexpr size_t kMaxCachedPieceBytes = 128;
constexpr size_t kMaxCacheEntries = size_t{1} << 20;

// GPT-2's bytes_to_unicode(): printable bytes map to themselves, the rest to code points 256, 257, ... in order.
struct ByteUnicodeMap {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<int16_t, 512> cp_to_byte{};
  ByteUnicodeMap() {
    cp_to_byte.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      byte_to_cp[b] = printable ? static_cast<uint32_t>(b) : next++;
      cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteUnicodeMap& byte_unicode_map() {
  static const ByteUnicodeMap map;
  return map;
}

// Maps a token as written in encoder.json / vocab.bpe (UTF-8 of the byte-mapped code points) back to raw bytes.
// Returns false if the text is not valid UTF-8 or uses a code point outside the byte map.
bool unmap_token(std::string_view text, std::string& bytes) {
  const auto& map = byte_unicode_map();
  bytes.clear();
  size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    uint32_t cp = 0;
    if (c < 0x80) {
      cp = c;
      i += 1;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < text.size()) {
      cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(text[i + 1]) & 0x3Fu);
      i += 2;
    } else {
      return false;  // every mapped code point is below 0x800, so two bytes at most
    }
    if (cp >= map.cp_to_byte.size() || map.cp_to_byte[cp] < 0) return false;
    bytes.push_back(static_cast<char>(map.cp_to_byte[cp]));
  }
  return true;
}

std::string read_text_file(const std::string& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  DS_CHECK_AS(IoError, in.good(),
              "[tokenizer] cannot open {} '{}': expected GPT-2's {} (it ships in data/tokenizer/gpt2/); "
              "check the --tokenizer directory",
              what, path, what);
  std::ostringstream ss;
  ss << in.rdbuf();
  return std::move(ss).str();
}

struct PcreCodeDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};

// (left id, right id) -> (rank, merged id), open addressing with linear probing; never resized after loading.
class PairRanks {
 public:
  struct Value {
    int32_t rank;
    int32_t merged;
  };
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    slots_.assign(cap, Slot{kEmpty, {0, 0}});
    mask_ = cap - 1;
  }
  // Keeps the first (lowest-rank) value when a pair repeats.
  void insert(int32_t left, int32_t right, Value v) {
    const uint64_t key = make_key(left, right);
    for (size_t i = hash(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == kEmpty) {
        slots_[i] = Slot{key, v};
        return;
      }
      if (slots_[i].key == key) return;
    }
  }
  const Value* find(int32_t left, int32_t right) const {
    const uint64_t key = make_key(left, right);
    for (size_t i = hash(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return &slots_[i].value;
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  struct Slot {
    uint64_t key;
    Value value;
  };
  static uint64_t make_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  size_t hash(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 20) & mask_; }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

}  // namespace

struct BpeTokenizer::Tables {
  std::vector<std::string> id_bytes;  // id -> raw bytes
  std::array<int32_t, 256> byte_id{};  // single byte -> id
  PairRanks ranks;
  int32_t eot = -1;
  std::unique_ptr<pcre2_code, PcreCodeDeleter> code;
  bool jit = false;
};

struct BpeTokenizer::Matcher {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  explicit Matcher(const pcre2_code* code, bool jit) {
    data = pcre2_match_data_create_from_pattern(code, nullptr);
    context = pcre2_match_context_create(nullptr);
    if (jit) {
      jit_stack = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, nullptr);
      pcre2_jit_stack_assign(context, nullptr, jit_stack);
    }
    if (data == nullptr || context == nullptr || (jit && jit_stack == nullptr)) {
      release();
      throw OutOfMemory("[tokenizer] cannot allocate PCRE2 match data");
    }
  }
  Matcher(const Matcher&) = delete;
  Matcher& operator=(const Matcher&) = delete;
  ~Matcher() { release(); }
  void release() {
    if (data) pcre2_match_data_free(data);
    if (context) pcre2_match_context_free(context);
    if (jit_stack) pcre2_jit_stack_free(jit_stack);
    data = nullptr;
    context = nullptr;
    jit_stack = nullptr;
  }
};

namespace {

std::shared_ptr<const BpeTokenizer::Tables> load_tables(const std::string& encoder_path,
                                                        const std::string& vocab_path) {
  auto tables = std::make_shared<BpeTokenizer::Tables>();

  // encoder.json: {"<mapped token>": id, ...} with ids 0..N-1, each once.
  const std::string encoder_text = read_text_file(encoder_path, "encoder.json");
  nlohmann::json encoder;
  JsonLimits limits;
  limits.max_bytes = size_t(64) << 20;  // GPT-2's is 1 MiB
  const std::string problem = parse_json_bounded(encoder_text, limits, encoder);
  DS_CHECK_AS(IoError, problem.empty(), "[tokenizer] '{}' is not valid JSON ({}); expected GPT-2's encoder.json, an "
              "object mapping token strings to ids", encoder_path, problem);
  DS_CHECK_AS(IoError, encoder.is_object() && !encoder.empty(),
              "[tokenizer] '{}' is not a JSON object of token -> id; expected GPT-2's encoder.json", encoder_path);
  const size_t n = encoder.size();
  tables->id_bytes.assign(n, std::string());
  std::vector<bool> seen(n, false);
  std::unordered_map<std::string, int32_t> mapped_to_id;
  mapped_to_id.reserve(n);
  std::string bytes;
  for (const auto& [key, value] : encoder.items()) {
    DS_CHECK_AS(IoError, value.is_number_integer() && value.get<int64_t>() >= 0 && value.get<int64_t>() < int64_t(n),
                "[tokenizer] '{}': token '{}' has id {}; expected an integer id in [0, {})", encoder_path, key,
                value.dump(), n);
    const auto id = value.get<int32_t>();
    DS_CHECK_AS(IoError, !seen[id], "[tokenizer] '{}': id {} is used twice; expected each id once", encoder_path,
                id);
    DS_CHECK_AS(IoError, unmap_token(key, bytes),
                "[tokenizer] '{}': token '{}' (id {}) uses a character outside GPT-2's byte-to-unicode map; "
                "expected a byte-level BPE vocabulary", encoder_path, key, id);
    seen[id] = true;
    tables->id_bytes[id] = bytes;
    mapped_to_id.emplace(key, id);
  }
  const auto eot = mapped_to_id.find(std::string(kEndOfText));
  DS_CHECK_AS(IoError, eot != mapped_to_id.end(), "[tokenizer] '{}' has no '{}' token; expected GPT-2's encoder.json",
              encoder_path, kEndOfText);
  tables->eot = eot->second;
  const auto& map = byte_unicode_map();
  for (int b = 0; b < 256; ++b) {
    std::string mapped;
    const uint32_t cp = map.byte_to_cp[b];
    if (cp < 0x80) {
      mapped.push_back(static_cast<char>(cp));
    } else {
      mapped.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      mapped.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    const auto it = mapped_to_id.find(mapped);
    DS_CHECK_AS(IoError, it != mapped_to_id.end(),
                "[tokenizer] '{}' has no token for byte 0x{:02x}; a byte-level BPE vocabulary needs all 256 bytes",
                encoder_path, b);
    tables->byte_id[b] = it->second;
  }

  // vocab.bpe: "#version: 0.2" then one merge "left right" a line, best (rank 0) first.
  const std::string vocab_text = read_text_file(vocab_path, "vocab.bpe");
  std::vector<std::string_view> lines;
  for (size_t pos = 0; pos < vocab_text.size();) {
    size_t end = vocab_text.find('\n', pos);
    if (end == std::string::npos) end = vocab_text.size();
    std::string_view line(vocab_text.data() + pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    pos = end + 1;
  }
  tables->ranks.reserve(lines.size());
  int32_t rank = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string_view line = lines[i];
    if (line.empty() || (i == 0 && line.starts_with("#version"))) continue;
    const size_t space = line.find(' ');
    DS_CHECK_AS(IoError, space != std::string_view::npos && space > 0 && space + 1 < line.size() &&
                             line.find(' ', space + 1) == std::string_view::npos,
                "[tokenizer] '{}' line {}: expected a merge 'left right' (two tokens, one space), found '{}'",
                vocab_path, i + 1, line);
    const std::string left(line.substr(0, space));
    const std::string right(line.substr(space + 1));
    const auto l = mapped_to_id.find(left);
    const auto r = mapped_to_id.find(right);
    const auto m = mapped_to_id.find(left + right);
    DS_CHECK_AS(IoError, l != mapped_to_id.end() && r != mapped_to_id.end() && m != mapped_to_id.end(),
                "[tokenizer] '{}' line {}: merge '{}' uses a token missing from '{}'; expected the vocab.bpe that "
                "belongs to this encoder.json", vocab_path, i + 1, line, encoder_path);
    tables->ranks.insert(l->second, r->second, {rank++, m->second});
  }
  DS_CHECK_AS(IoError, rank > 0, "[tokenizer] '{}' has no merges; expected GPT-2's vocab.bpe", vocab_path);

  int error = 0;
  PCRE2_SIZE error_offset = 0;
  tables->code.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kGpt2Pattern), PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &error_offset, nullptr));
  if (!tables->code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    DS_ASSERT(false, "GPT-2 pattern failed to compile at offset {}: {}", error_offset,
              reinterpret_cast<const char*>(message));
  }
  tables->jit = pcre2_jit_compile(tables->code.get(), PCRE2_JIT_COMPLETE) == 0;
  return tables;
}

}  // namespace

BpeTokenizer::BpeTokenizer(std::shared_ptr<const Tables> tables)
    : tables_(std::move(tables)),
      matcher_(std::make_unique<Matcher>(tables_->code.get(), tables_->jit)),
      eot_(tables_->eot) {}

BpeTokenizer::BpeTokenizer(const std::string& encoder_json_path, const std::string& vocab_bpe_path)
    : BpeTokenizer(load_tables(encoder_json_path, vocab_bpe_path)) {}

BpeTokenizer BpeTokenizer::from_directory(const std::string& dir) {
  const std::filesystem::path base(dir);
  DS_CHECK_AS(IoError, std::filesystem::is_directory(base),
              "[tokenizer] tokenizer directory '{}' does not exist; expected a directory holding encoder.json and "
              "vocab.bpe (data/tokenizer/gpt2 in the repository)", dir);
  return BpeTokenizer((base / "encoder.json").string(), (base / "vocab.bpe").string());
}

BpeTokenizer::BpeTokenizer(const BpeTokenizer& other)
    : tables_(other.tables_),
      matcher_(std::make_unique<Matcher>(tables_->code.get(), tables_->jit)),
      eot_(other.eot_),
      cache_(other.cache_),
      cache_ids_(other.cache_ids_) {}

BpeTokenizer& BpeTokenizer::operator=(const BpeTokenizer& other) {
  if (this != &other) *this = BpeTokenizer(other);
  return *this;
}

BpeTokenizer::BpeTokenizer(BpeTokenizer&&) noexcept = default;
BpeTokenizer& BpeTokenizer::operator=(BpeTokenizer&&) noexcept = default;
BpeTokenizer::~BpeTokenizer() = default;

int32_t BpeTokenizer::vocab_size() const { return static_cast<int32_t>(tables_->id_bytes.size()); }

template <typename Fn>
void BpeTokenizer::for_each_piece(std::string_view text, Fn&& fn) {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  const pcre2_code* code = tables_->code.get();
  PCRE2_SIZE* ov = pcre2_get_ovector_pointer(matcher_->data);
  size_t pos = 0;
  while (pos < n) {
    const int rc = tables_->jit ? pcre2_jit_match(code, subject, n, pos, 0, matcher_->data, matcher_->context)
                                : pcre2_match(code, subject, n, pos, 0, matcher_->data, matcher_->context);
    if (rc == PCRE2_ERROR_NOMATCH) {
      fn(pos, n, false);  // trailing bytes that are not valid UTF-8
      return;
    }
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      DS_THROW(Error, "[tokenizer] pre-tokenisation failed at byte {} of {}: {}", pos, n,
               reinterpret_cast<const char*>(message));
    }
    DS_ASSERT(ov[1] > ov[0] && ov[0] >= pos, "GPT-2 pattern matched [{}, {}) from {}", ov[0], ov[1], pos);
    if (ov[0] > pos) fn(pos, static_cast<size_t>(ov[0]), false);  // a run of invalid UTF-8 the regex skipped
    fn(static_cast<size_t>(ov[0]), static_cast<size_t>(ov[1]), true);
    pos = ov[1];
  }
}

void BpeTokenizer::pretokenize(std::string_view text, std::vector<std::string_view>& pieces) {
  for_each_piece(text, [&](size_t b, size_t e, bool) { pieces.push_back(text.substr(b, e - b)); });
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) {
  std::vector<int32_t> out;
  out.reserve(text.size() / 4 + 8);
  encode_into(text, out);
  return out;
}

void BpeTokenizer::encode_into(std::string_view text, std::vector<int32_t>& out) {
  for_each_piece(text, [&](size_t b, size_t e, bool) { encode_piece(text.substr(b, e - b), out); });
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& out) {
  if (piece.size() == 1) {
    out.push_back(tables_->byte_id[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (const auto it = cache_.find(piece); it != cache_.end()) {
    const int32_t* ids = cache_ids_.data() + it->second.offset;
    out.insert(out.end(), ids, ids + it->second.count);
    return;
  }
  const size_t first = out.size();
  bpe(piece, out);
  if (piece.size() > kMaxCachedPieceBytes) return;
  if (cache_.size() >= kMaxCacheEntries) clear_cache();
  const CacheEntry entry{static_cast<uint32_t>(cache_ids_.size()), static_cast<uint32_t>(out.size() - first)};
  cache_ids_.insert(cache_ids_.end(), out.begin() + static_cast<std::ptrdiff_t>(first), out.end());
  cache_.emplace(std::string(piece), entry);
}

void BpeTokenizer::bpe(std::string_view piece, std::vector<int32_t>& out) const {
  // Symbols form a doubly linked list over the piece's bytes; a merge folds the right symbol into the left one.
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
  };
  // A candidate merge of the symbol at pos with its right neighbour; stale entries are skipped when popped.
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t left;
    int32_t right;
    int32_t merged;
  };
  const auto worse = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  DS_CHECK(piece.size() < static_cast<size_t>(INT32_MAX),
           "[tokenizer] a single pre-token of {} bytes is too long for BPE (limit 2^31); split the text", piece.size());
  const int32_t n = static_cast<int32_t>(piece.size());
  if (n == 0) return;
  std::vector<Symbol> symbols(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) {
    symbols[i] = Symbol{tables_->byte_id[static_cast<unsigned char>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1};
  }
  std::vector<Candidate> heap;
  heap.reserve(static_cast<size_t>(n));
  const auto push = [&](int32_t pos) {
    if (pos < 0) return;
    const int32_t next = symbols[pos].next;
    if (next < 0) return;
    if (const auto* v = tables_->ranks.find(symbols[pos].id, symbols[next].id)) {
      heap.push_back(Candidate{v->rank, pos, symbols[pos].id, symbols[next].id, v->merged});
      std::push_heap(heap.begin(), heap.end(), worse);
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), worse);
    const Candidate c = heap.back();
    heap.pop_back();
    Symbol& left = symbols[c.pos];
    // Ids only ever grow into longer tokens, so equal ids mean both symbols are unchanged since the push.
    if (left.id != c.left || left.next < 0 || symbols[left.next].id != c.right) continue;
    Symbol& right = symbols[left.next];
    left.id = c.merged;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = c.pos;
    right.id = -1;
    push(left.prev);
    push(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
}

std::string_view BpeTokenizer::token_bytes(int32_t id) const {
  DS_CHECK(id >= 0 && id < vocab_size(), "[tokenizer] token id {} is out of range; expected an id in [0, {})", id,
           vocab_size());
  return tables_->id_bytes[static_cast<size_t>(id)];
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids) const {
  std::string text;
  text.reserve(ids.size() * 4);
  for (const int32_t id : ids) text.append(token_bytes(id));
  return text;
}

}  // namespace ds::data
