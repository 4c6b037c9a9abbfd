// Whole-file I/O shared by the on-disk formats (safetensors, token shards): atomic replacement and read-only
// mapping. AtomicFileWriter writes "<path>.tmp.<pid>.<seq>" (O_EXCL; the process-wide sequence number keeps two
// threads of one process, i.e. local-backend ranks, apart), fsyncs it, renames it over the path and fsyncs the
// directory. A failed directory fsync is an IoError although the file is complete: the rename may not survive a
// crash, so the caller must not publish it. Every message starts "[component] 'path'" and says what to do.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ds {

class AtomicFileWriter {
 public:
  // Creates the temp file beside `path`; IoError when its directory is missing or not writable.
  AtomicFileWriter(const std::string& path, std::string_view component);
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  // Removes the temp file unless commit() renamed it; never throws. An existing file at `path` is left untouched.
  ~AtomicFileWriter();

  // Appends n bytes; IoError on a failed write (disk full, quota, file size limit).
  void write(const void* data, size_t n);
  // fsync, close, rename over `path`, fsync of the directory. Call once, after the last write().
  void commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return tmp_; }

 private:
  std::string path_;
  std::string tmp_;
  std::string component_;
  int fd_ = -1;
  bool committed_ = false;
};

// A whole file mapped read-only (MAP_PRIVATE). The mapping outlives a rename or unlink of the file. An empty file
// maps to data() == nullptr and size() == 0. Move-only; the destructor unmaps.
class MappedFile {
 public:
  // IoError when the file cannot be opened, is not a regular file or cannot be mapped. `expected` describes what
  // the file should be ("a .safetensors file") for the messages; it may be empty.
  static MappedFile open(const std::string& path, std::string_view component, std::string_view expected = {});

  MappedFile() = default;  // maps nothing
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return static_cast<const uint8_t*>(map_); }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void release() noexcept;

  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
};

}  // namespace ds
