// Reader and writer of the safetensors format (DESIGN decision 10), independent of any tensor class: the reader
// maps the file read-only and hands out byte views; the writer takes byte views. Views may be unaligned (other
// writers need not align tensors), so consumers copy with memcpy or use the *_to_* helpers below. Our writer
// orders tensors by element size (largest first), then name, as the reference writer does, so every tensor it
// writes is aligned to its element size. Writes are atomic (temp file, fsync, rename, fsync of the directory).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ds/core/file_io.h"

namespace ds::ckpt {

// Bytes per element of a safetensors dtype string ("F32", "BF16", "I64", ...); 0 if the dtype is unknown.
size_t safetensors_dtype_size(std::string_view dtype);

// One tensor inside a mapped file. `data` points into the mapping (valid while the SafetensorsFile lives) and
// may be unaligned for its dtype.
struct SafetensorsView {
  std::string dtype;           // "F32", "BF16", "F16", "F64", "I8".."I64", "U8".."U64", "BOOL", "F8_E4M3", "F8_E5M2"
  std::vector<int64_t> shape;  // empty for a scalar
  const void* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const;
};

// A safetensors file mapped read-only. Move-only; the mapping is released by the destructor.
class SafetensorsFile {
 public:
  // Maps and validates the whole header: throws IoError on a missing file, a file shorter than 8 bytes, a header
  // length beyond the file, malformed JSON, an unknown dtype, nbytes != numel * dtype size, offsets out of range,
  // overlapping or leaving gaps, or a file size that does not match the last offset.
  static SafetensorsFile open(const std::string& path);

  SafetensorsFile(SafetensorsFile&& other) noexcept = default;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile() = default;

  const std::string& path() const { return file_.path(); }
  size_t size() const { return tensors_.size(); }
  std::vector<std::string> names() const;  // sorted by name
  bool contains(const std::string& name) const;
  // Throws IoError naming the file and the missing tensor, with the closest names the file does hold.
  const SafetensorsView& get(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;

  MappedFile file_;  // the views in tensors_ point into it; a move keeps the mapping where it is
  std::map<std::string, SafetensorsView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write. `data` may be null when nbytes is 0.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
};

// Writes `entries` atomically to `path`: validates every entry first (known dtype, unique non-empty names other
// than "__metadata__", non-negative dims, nbytes == numel * dtype size), then writes "<path>.tmp.<pid>.<seq>",
// fsyncs it, renames it over `path` and fsyncs the directory. On any failure it throws IoError, removes the temp
// file and leaves an existing file at `path` untouched. The header is compact JSON padded with spaces to a
// multiple of 8 bytes; "__metadata__" comes first when `metadata` is non-empty.
void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& entries,
                       const std::map<std::string, std::string>& metadata = {});

// The same format streamed, for files larger than one wants in memory at once: the header is written from the
// entries (their data pointers are not used), in the order given (give tensors of larger elements first to keep
// them aligned), then write() takes the data bytes in that order, in pieces of any size, and commit() publishes
// the file atomically once exactly the announced bytes were written. Destroyed without commit(), it leaves no
// file behind and an existing file at `path` untouched.
class SafetensorsWriter {
 public:
  SafetensorsWriter(const std::string& path, const std::vector<SafetensorsEntry>& entries,
                    const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  void write(const void* data, size_t nbytes);
  void commit();

 private:
  std::unique_ptr<AtomicFileWriter> out_;
  uint64_t total_ = 0, written_ = 0;
};

// Copies a floating-point tensor into f32: F32 bit-exact, BF16 and F16 widened exactly. Any other dtype throws
// IoError (say what to convert instead).
std::vector<float> safetensors_to_f32(const SafetensorsView& view);
// Copies an integer tensor into i32: I32 as is, I64 when every value fits (else IoError).
std::vector<int32_t> safetensors_to_i32(const SafetensorsView& view);

// Convenience: file.get(name) then the conversion; errors name the file and the tensor.
std::vector<float> read_safetensors_f32(const SafetensorsFile& file, const std::string& name);
// The same for a model parameter that must be there with this shape: a missing tensor or another shape is an
// IoError naming the file, the tensor and both shapes, ending with `fix` (what the user should do).
std::vector<float> read_safetensors_f32(const SafetensorsFile& file, const std::string& name,
                                        const std::vector<int64_t>& shape, std::string_view fix);
std::vector<int32_t> read_safetensors_i32(const SafetensorsFile& file, const std::string& name);

}  // namespace ds::ckpt
