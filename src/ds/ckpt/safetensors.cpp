// Safetensors reader (mmap + full header validation) and atomic writer. Validation is as strict as the reference
// Rust implementation: sorted by offset, tensors must tile the data section exactly (no overlap, no gap, no
// trailing bytes), so a truncated or spliced file is caught at open() rather than as garbage weights later.
// The writer streams each entry straight from the caller's buffer (no staging copy of a multi-GB shard) through
// an AtomicFileWriter (ds/core/file_io.h), which owns the temp file, fsync, rename and directory fsync.
#include "ds/ckpt/safetensors.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "ds/core/error.h"
#include "ds/core/json_input.h"
#include "ds/core/strings.h"
#include "ds/kernels/cpu/kernels.h"

namespace ds::ckpt {

static_assert(std::endian::native == std::endian::little, "safetensors is little-endian; big-endian hosts unsupported");

namespace {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

// The reference implementation refuses headers above 100 MB; a larger length is a corrupt file, not a header.
constexpr uint64_t kMaxHeaderSize = 100'000'000;

// Number of elements, or false on a negative dimension or overflow.
bool checked_numel(const std::vector<int64_t>& shape, uint64_t* out) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  }
  *out = n;
  return true;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Parses one tensor entry of the header; `where` prefixes every message.
SafetensorsView parse_entry(const std::string& where, const std::string& name, const json& info,
                            uint64_t* begin, uint64_t* end) {
  DS_CHECK_AS(IoError, info.is_object(),
              "{}: entry '{}' should be an object {{\"dtype\", \"shape\", \"data_offsets\"}}, found {}. The file "
              "is corrupt or not safetensors; re-save it.",
              where, name, json_excerpt(info));
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    DS_CHECK_AS(IoError, info.contains(key), "{}: entry '{}' has no \"{}\" field (found {}). The file is corrupt; "
                "re-save it.", where, name, key, json_excerpt(info));
  }
  SafetensorsView view;
  const json& dtype = info["dtype"];
  DS_CHECK_AS(IoError, dtype.is_string() && safetensors_dtype_size(dtype.get<std::string>()) != 0,
              "{}: tensor '{}' has dtype {}, expected one of F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, I16, "
              "I8, U64, U32, U16, U8, BOOL. Convert the tensor to a supported dtype before saving.",
              where, name, json_excerpt(dtype));
  view.dtype = dtype.get<std::string>();

  const json& shape = info["shape"];
  DS_CHECK_AS(IoError, shape.is_array(), "{}: tensor '{}' has shape {}, expected an array of non-negative "
              "integers. The file is corrupt; re-save it.", where, name, json_excerpt(shape));
  for (const json& d : shape) {
    DS_CHECK_AS(IoError, d.is_number_unsigned() && d.get<uint64_t>() <= uint64_t{std::numeric_limits<int64_t>::max()},
                "{}: tensor '{}' has shape {}, expected non-negative integer dimensions. The file is corrupt; "
                "re-save it.", where, name, json_excerpt(shape));
    view.shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
  }

  const json& offs = info["data_offsets"];
  DS_CHECK_AS(IoError, offs.is_array() && offs.size() == 2 && offs[0].is_number_unsigned() &&
                           offs[1].is_number_unsigned(),
              "{}: tensor '{}' has data_offsets {}, expected [begin, end] as non-negative integers. The file is "
              "corrupt; re-save it.", where, name, json_excerpt(offs));
  *begin = offs[0].get<uint64_t>();
  *end = offs[1].get<uint64_t>();
  DS_CHECK_AS(IoError, *begin <= *end, "{}: tensor '{}' has data_offsets [{}, {}] with begin after end. The file "
              "is corrupt; re-save it.", where, name, *begin, *end);

  uint64_t numel = 0;
  uint64_t nbytes = 0;
  bool ok = checked_numel(view.shape, &numel) &&
            !__builtin_mul_overflow(numel, uint64_t{safetensors_dtype_size(view.dtype)}, &nbytes);
  DS_CHECK_AS(IoError, ok && nbytes == *end - *begin,
              "{}: tensor '{}' ({} {}) should occupy {} bytes but data_offsets [{}, {}] span {} bytes. The file "
              "is corrupt; re-save it.", where, name, view.dtype, shape_str(view.shape),
              ok ? std::to_string(nbytes) : std::string("an overflowing number of"), *begin, *end, *end - *begin);
  view.nbytes = static_cast<size_t>(nbytes);
  return view;
}

}  // namespace

size_t safetensors_dtype_size(std::string_view dtype) {
  static const std::map<std::string_view, size_t> kSizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
      {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},   {"U64", 8},     {"U32", 4},
      {"U16", 2}, {"U8", 1},  {"BOOL", 1}};
  auto it = kSizes.find(dtype);
  return it == kSizes.end() ? 0 : it->second;
}

int64_t SafetensorsView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------------------- reader

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  const std::string where = fmt::format("[safetensors] '{}'", path);
  SafetensorsFile f;
  f.file_ = MappedFile::open(path, "safetensors", "a .safetensors file");  // any throw below unmaps
  const uint64_t file_size = f.file_.size();
  DS_CHECK_AS(IoError, file_size >= 8,
              "{}: file is {} bytes, too short for the 8-byte header length. The file is truncated; re-save it.",
              where, file_size);
  const unsigned char* bytes = f.file_.data();

  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes, 8);
  DS_CHECK_AS(IoError, header_len <= file_size - 8 && header_len <= kMaxHeaderSize,
              "{}: header length {} exceeds the {} bytes after the length field{}. The file is truncated or not "
              "safetensors; re-save it.", where, header_len, file_size - 8,
              header_len > kMaxHeaderSize ? " (and the 100 MB header limit)" : "");

  const char* hbegin = reinterpret_cast<const char*>(bytes + 8);
  json header;
  JsonLimits limits;
  limits.max_bytes = kMaxHeaderSize;
  limits.max_depth = 8;  // {"name": {"dtype", "shape": [...], "data_offsets": [...]}, "__metadata__": {...}}
  const std::string problem = parse_json_bounded(std::string_view(hbegin, header_len), limits, header);
  DS_CHECK_AS(IoError, problem.empty(), "{}: header ({} bytes) is not valid JSON: {}. The file is corrupt or not "
              "safetensors; re-save it.", where, header_len, problem);
  DS_CHECK_AS(IoError, header.is_object(), "{}: header should be a JSON object, found {}. The file is corrupt; "
              "re-save it.", where, header.type_name());

  struct Span {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      const json& meta = it.value();
      if (meta.is_null()) continue;
      DS_CHECK_AS(IoError, meta.is_object(), "{}: __metadata__ should be an object of strings, found {}. The file "
                  "is corrupt; re-save it.", where, meta.type_name());
      for (auto m = meta.begin(); m != meta.end(); ++m) {
        DS_CHECK_AS(IoError, m.value().is_string(), "{}: __metadata__ value for '{}' should be a string, found {}. "
                    "Store metadata values as strings.", where, m.key(), json_excerpt(m.value()));
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    uint64_t begin = 0, end = 0;
    SafetensorsView view = parse_entry(where, it.key(), it.value(), &begin, &end);
    auto [slot, inserted] = f.tensors_.emplace(it.key(), std::move(view));
    spans.push_back({begin, end, &slot->first});
  }

  // Tensors must tile [0, data_size) exactly, as the reference reader requires.
  const uint64_t data_size = file_size - 8 - header_len;
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expect = 0;
  for (const Span& s : spans) {
    DS_CHECK_AS(IoError, s.end <= data_size,
                "{}: tensor '{}' has data_offsets [{}, {}] beyond the {}-byte data section. The file is truncated; "
                "re-save it.", where, *s.name, s.begin, s.end, data_size);
    DS_CHECK_AS(IoError, s.begin >= expect, "{}: tensor '{}' at data_offsets [{}, {}] overlaps the previous tensor, "
                "which ends at {}. The file is corrupt; re-save it.", where, *s.name, s.begin, s.end, expect);
    DS_CHECK_AS(IoError, s.begin == expect, "{}: tensor '{}' starts at offset {} but the previous tensor ends at {} "
                "(a gap of unaccounted bytes). The file is corrupt; re-save it.", where, *s.name, s.begin, expect);
    expect = s.end;
  }
  DS_CHECK_AS(IoError, expect == data_size, "{}: the tensors cover {} bytes but the data section holds {} (file {} "
              "bytes, header {}). The file has trailing bytes or is corrupt; re-save it.", where, expect, data_size,
              file_size, header_len);

  const unsigned char* data = bytes + 8 + header_len;
  for (const Span& s : spans) f.tensors_.at(*s.name).data = data + s.begin;
  return f;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, view] : tensors_) out.push_back(name);
  return out;
}

bool SafetensorsFile::contains(const std::string& name) const { return tensors_.count(name) != 0; }

const SafetensorsView& SafetensorsFile::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it != tensors_.end()) return it->second;
  const std::vector<std::string> closest = closest_names(name, names(), 3);
  DS_THROW(IoError, "[safetensors] '{}': no tensor named '{}' among its {} tensors{}{}. Check the name or the "
           "checkpoint's model.", path(), name, tensors_.size(), closest.empty() ? "" : "; closest: ",
           quoted_list(closest));
}

// ---------------------------------------------------------------------------------------------------- writer

namespace {

void validate_entries(const std::string& path, const std::vector<SafetensorsEntry>& entries, bool need_data) {
  std::set<std::string_view> seen;
  for (const SafetensorsEntry& e : entries) {
    DS_CHECK_AS(IoError, !e.name.empty() && e.name != "__metadata__",
                "[safetensors] writing '{}': tensor name '{}' is reserved or empty. Rename the tensor.", path, e.name);
    DS_CHECK_AS(IoError, seen.insert(e.name).second,
                "[safetensors] writing '{}': tensor '{}' appears twice. Each name must be unique.", path, e.name);
    size_t esize = safetensors_dtype_size(e.dtype);
    DS_CHECK_AS(IoError, esize != 0, "[safetensors] writing '{}': tensor '{}' has unknown dtype '{}', expected F64, "
                "F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, I16, I8, U64, U32, U16, U8 or BOOL.", path, e.name,
                e.dtype);
    uint64_t numel = 0, nbytes = 0;
    bool ok = checked_numel(e.shape, &numel) && !__builtin_mul_overflow(numel, uint64_t{esize}, &nbytes);
    DS_CHECK_AS(IoError, ok && nbytes == e.nbytes, "[safetensors] writing '{}': tensor '{}' ({} {}) should hold "
                "{} bytes but {} were given. Pass nbytes = numel * dtype size.", path, e.name, e.dtype,
                shape_str(e.shape), ok ? std::to_string(nbytes) : std::string("an invalid number of"), e.nbytes);
    DS_CHECK_AS(IoError, !need_data || e.nbytes == 0 || e.data != nullptr,
                "[safetensors] writing '{}': tensor '{}' has {} bytes but a null data pointer.", path, e.name,
                e.nbytes);
  }
}

}  // namespace

SafetensorsWriter::SafetensorsWriter(const std::string& path, const std::vector<SafetensorsEntry>& entries,
                                     const std::map<std::string, std::string>& metadata) {
  validate_entries(path, entries, false);  // before touching the disk: a bad call never disturbs an existing file
  ordered_json header = ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  for (const SafetensorsEntry& e : entries) {
    header[e.name] = {{"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {total_, total_ + e.nbytes}}};
    total_ += e.nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();
  out_ = std::make_unique<AtomicFileWriter>(path, "safetensors");
  out_->write(&header_len, 8);
  out_->write(text.data(), text.size());
}

SafetensorsWriter::~SafetensorsWriter() = default;

void SafetensorsWriter::write(const void* data, size_t nbytes) {
  DS_CHECK_AS(IoError, written_ + nbytes <= total_, "[safetensors] writing '{}': {} bytes more than the {} the "
              "header announced", out_->path(), written_ + nbytes - total_, total_);
  out_->write(data, nbytes);
  written_ += nbytes;
}

void SafetensorsWriter::commit() {
  DS_CHECK_AS(IoError, written_ == total_, "[safetensors] writing '{}': {} of the {} data bytes were written; the "
              "file is incomplete and was not published", out_->path(), written_, total_);
  out_->commit();
}

void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& entries,
                       const std::map<std::string, std::string>& metadata) {
  validate_entries(path, entries, true);
  // Largest element size first, then by name: keeps every tensor aligned to its element size.
  std::vector<SafetensorsEntry> order = entries;
  std::stable_sort(order.begin(), order.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    size_t sa = safetensors_dtype_size(a.dtype), sb = safetensors_dtype_size(b.dtype);
    return sa != sb ? sa > sb : a.name < b.name;
  });
  SafetensorsWriter out(path, order, metadata);
  for (const SafetensorsEntry& e : order) out.write(e.data, e.nbytes);
  out.commit();
}

// ---------------------------------------------------------------------------------------------------- conversion

namespace {

std::vector<float> to_f32(const SafetensorsView& v, const std::string& where) {
  const size_t n = static_cast<size_t>(v.numel());
  std::vector<float> out(n);
  const auto* src = static_cast<const unsigned char*>(v.data);
  if (v.dtype == "F32") {
    if (n) std::memcpy(out.data(), src, n * 4);
  } else if (v.dtype == "BF16" || v.dtype == "F16") {
    // The kernels take uint16_t*; other writers need not align tensors, so an odd address gets a staging copy.
    std::vector<uint16_t> staged;
    const auto* halves = reinterpret_cast<const uint16_t*>(src);
    if (reinterpret_cast<uintptr_t>(src) % alignof(uint16_t) != 0) {
      staged.resize(n);
      if (n) std::memcpy(staged.data(), src, n * 2);
      halves = staged.data();
    }
    cpu::to_f32(out.data(), halves, v.dtype == "BF16" ? DType::bf16 : DType::f16, n);
  } else {
    DS_THROW(IoError, "{}: dtype {} cannot be read as f32; expected F32, BF16 or F16. Read it with the matching "
             "integer helper or convert the checkpoint.", where, v.dtype);
  }
  return out;
}

std::vector<int32_t> to_i32(const SafetensorsView& v, const std::string& where) {
  const size_t n = static_cast<size_t>(v.numel());
  std::vector<int32_t> out(n);
  const auto* src = static_cast<const unsigned char*>(v.data);
  if (v.dtype == "I32") {
    if (n) std::memcpy(out.data(), src, n * 4);
  } else if (v.dtype == "I64") {
    for (size_t i = 0; i < n; ++i) {
      int64_t x;
      std::memcpy(&x, src + 8 * i, 8);
      DS_CHECK_AS(IoError, x >= std::numeric_limits<int32_t>::min() && x <= std::numeric_limits<int32_t>::max(),
                  "{}: I64 value {} at index {} does not fit in i32.", where, x, i);
      out[i] = static_cast<int32_t>(x);
    }
  } else {
    DS_THROW(IoError, "{}: dtype {} cannot be read as i32; expected I32 or I64.", where, v.dtype);
  }
  return out;
}

}  // namespace

std::vector<float> safetensors_to_f32(const SafetensorsView& view) { return to_f32(view, "[safetensors]"); }
std::vector<int32_t> safetensors_to_i32(const SafetensorsView& view) { return to_i32(view, "[safetensors]"); }

std::vector<float> read_safetensors_f32(const SafetensorsFile& file, const std::string& name) {
  return to_f32(file.get(name), fmt::format("[safetensors] '{}' tensor '{}'", file.path(), name));
}

std::vector<float> read_safetensors_f32(const SafetensorsFile& file, const std::string& name,
                                        const std::vector<int64_t>& shape, std::string_view fix) {
  DS_CHECK_AS(IoError, file.contains(name), "[safetensors] '{}' has no tensor '{}'; {}", file.path(), name, fix);
  const SafetensorsView& v = file.get(name);
  DS_CHECK_AS(IoError, v.shape == shape, "[safetensors] '{}': tensor '{}' has shape [{}] but [{}] is needed; {}",
              file.path(), name, fmt::join(v.shape, ", "), fmt::join(shape, ", "), fix);
  return read_safetensors_f32(file, name);
}

std::vector<int32_t> read_safetensors_i32(const SafetensorsFile& file, const std::string& name) {
  return to_i32(file.get(name), fmt::format("[safetensors] '{}' tensor '{}'", file.path(), name));
}

}  // namespace ds::ckpt
