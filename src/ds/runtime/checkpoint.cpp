// Checkpoint writing, reading, loading at another layout, and consolidation (see checkpoint.h).
#include "ds/runtime/checkpoint.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include <fmt/ranges.h>

#include "ds/comm/communicator.h"
#include "ds/core/error.h"
#include "ds/core/file_io.h"
#include "ds/core/log.h"
#include "ds/core/strings.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/nn/parameter.h"
#include "ds/zero/zero_optimizer.h"

namespace ds {
namespace fs = std::filesystem;

namespace {

std::string dims_str(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

std::string shard_name(int rank) { return fmt::format("rank_{:05d}.safetensors", rank); }

uint32_t crc_of(const uint8_t* data, size_t n) {
  return static_cast<uint32_t>(crc32_z(crc32_z(0L, Z_NULL, 0), data, n));
}

void write_text_atomically(const std::string& path, const std::string& text) {
  AtomicFileWriter out(path, "checkpoint");
  out.write(text.data(), text.size());
  out.commit();
}

void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  DS_CHECK_AS(IoError, fd >= 0, "[checkpoint] '{}': cannot open the directory to sync it", dir);
  const int rc = ::fsync(fd);
  ::close(fd);
  DS_CHECK_AS(IoError, rc == 0, "[checkpoint] '{}': fsync of the directory failed; the checkpoint may not survive "
              "a crash", dir);
}

// A test hook: DSPEED_TEST_KILL_DURING_SAVE=1 makes rank 0 kill itself after the shards are written and before the
// manifest and `latest`, the moment a crash would do most harm.
void maybe_die_mid_save(int rank) {
  const char* v = std::getenv("DSPEED_TEST_KILL_DURING_SAVE");
  if (v && std::string(v) == "1" && rank == 0) ::raise(SIGKILL);
}

template <typename T>
T get_field(const nlohmann::json& j, const char* key, const std::string& where) {
  DS_CHECK_AS(IoError, j.is_object() && j.contains(key), "[checkpoint] {}: the field '{}' is missing; the manifest "
              "is damaged or was not written by dspeed", where, key);
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    DS_THROW(IoError, "[checkpoint] {}: the field '{}' has the wrong type ({})", where, key, j.at(key).dump());
  }
}

}  // namespace

int64_t CheckpointParam::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

nlohmann::json CheckpointManifest::to_json() const {
  nlohmann::json j;
  j["format"] = "dspeed-checkpoint";
  j["version"] = kVersion;
  j["tag"] = tag;
  j["global_steps"] = global_steps;
  j["global_samples"] = global_samples;
  j["optimizer_steps"] = optimizer_steps;
  j["model"] = model;
  j["zero_stage"] = zero_stage;
  j["world"] = world;
  for (const auto& u : units)
    j["units"].push_back(
        {{"name", u.name}, {"offset", u.offset}, {"numel", u.numel}, {"padded_numel", u.padded_numel}});
  for (const auto& p : params) j["params"].push_back({{"name", p.name}, {"shape", p.shape}, {"offset", p.offset}});
  for (const auto& s : shards)
    j["shards"].push_back({{"file", s.file}, {"rank", s.rank}, {"partition_numel", s.partition_numel},
                           {"bytes", s.bytes}, {"crc32", s.crc32}});
  j["config"] = config;
  j["engine_state"] = engine_state;
  j["client_state"] = client_state;
  return j;
}

CheckpointManifest CheckpointManifest::from_json(const nlohmann::json& j, const std::string& where) {
  DS_CHECK_AS(IoError, j.is_object() && j.value("format", std::string()) == "dspeed-checkpoint",
              "[checkpoint] {}: not a dspeed checkpoint manifest (no \"format\": \"dspeed-checkpoint\")", where);
  const int version = get_field<int>(j, "version", where);
  DS_CHECK_AS(IoError, version == kVersion, "[checkpoint] {}: manifest version {} is not supported (this build "
              "reads version {}); use the dspeed that wrote it", where, version, kVersion);
  CheckpointManifest m;
  m.tag = get_field<std::string>(j, "tag", where);
  m.global_steps = get_field<int64_t>(j, "global_steps", where);
  m.global_samples = get_field<int64_t>(j, "global_samples", where);
  m.optimizer_steps = get_field<int64_t>(j, "optimizer_steps", where);
  m.model = get_field<nlohmann::json>(j, "model", where);
  m.zero_stage = get_field<int>(j, "zero_stage", where);
  m.world = get_field<int>(j, "world", where);
  for (const auto& u : get_field<nlohmann::json>(j, "units", where))
    m.units.push_back({get_field<std::string>(u, "name", where), get_field<int64_t>(u, "offset", where),
                       get_field<int64_t>(u, "numel", where), get_field<int64_t>(u, "padded_numel", where)});
  for (const auto& p : get_field<nlohmann::json>(j, "params", where))
    m.params.push_back({get_field<std::string>(p, "name", where), get_field<std::vector<int64_t>>(p, "shape", where),
                        get_field<int64_t>(p, "offset", where)});
  for (const auto& s : get_field<nlohmann::json>(j, "shards", where))
    m.shards.push_back({get_field<std::string>(s, "file", where), get_field<int>(s, "rank", where),
                        get_field<int64_t>(s, "partition_numel", where), get_field<int64_t>(s, "bytes", where),
                        get_field<uint32_t>(s, "crc32", where)});
  m.config = j.value("config", nlohmann::json::object());
  m.engine_state = j.value("engine_state", nlohmann::json::object());
  m.client_state = j.value("client_state", nlohmann::json::object());
  DS_CHECK_AS(IoError, m.world >= 1 && m.zero_stage >= 0 && m.zero_stage <= 3 && !m.units.empty(),
              "[checkpoint] {}: world {} / stage {} / {} units is not a valid layout", where, m.world, m.zero_stage,
              m.units.size());
  const size_t want_shards = m.zero_stage == 0 ? 1 : static_cast<size_t>(m.world);
  DS_CHECK_AS(IoError, m.shards.size() == want_shards, "[checkpoint] {}: a stage-{} checkpoint of world {} has {} "
              "shard(s), but the manifest lists {}", where, m.zero_stage, m.world, want_shards, m.shards.size());
  return m;
}

std::string checkpoint_tag_dir(const std::string& dir, const std::string& tag) {
  DS_CHECK_AS(IoError, fs::is_directory(dir), "[checkpoint] '{}' is not a directory; give the directory passed to "
              "--save", dir);
  std::string t = tag;
  if (t.empty()) {
    const std::string latest = (fs::path(dir) / "latest").string();
    std::ifstream in(latest);
    DS_CHECK_AS(IoError, in.good(), "[checkpoint] '{}' has no 'latest' file, so no complete checkpoint was saved "
                "there; give a tag, or the directory a run saved to", dir);
    std::getline(in, t);
    DS_CHECK_AS(IoError, !t.empty(), "[checkpoint] '{}' is empty; it should name the newest tag", latest);
  }
  const std::string tag_dir = (fs::path(dir) / t).string();
  DS_CHECK_AS(IoError, fs::is_directory(tag_dir), "[checkpoint] '{}' does not exist; the tags in '{}' are the "
              "directories holding a manifest.json", tag_dir, dir);
  return tag_dir;
}

// ------------------------------------------------------------------------------------------------------ reading

CheckpointReader::CheckpointReader(const std::string& dir, const std::string& tag, bool verify)
    : tag_dir_(checkpoint_tag_dir(dir, tag)) {
  const std::string manifest_path = (fs::path(tag_dir_) / "manifest.json").string();
  std::ifstream in(manifest_path);
  DS_CHECK_AS(IoError, in.good(), "[checkpoint] '{}' is missing: the checkpoint was not completed; load an earlier "
              "tag (see '{}/latest')", manifest_path, dir);
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::parse_error& e) {
    DS_THROW(IoError, "[checkpoint] '{}' is not valid JSON ({}); the file is damaged", manifest_path, e.what());
  }
  manifest_ = CheckpointManifest::from_json(j, "'" + manifest_path + "'");
  const CheckpointManifest& m = manifest_;
  int64_t part = 0;
  for (const CheckpointUnit& u : m.units) {
    const int64_t chunk = m.zero_stage == 0 ? u.padded_numel : u.padded_numel / m.world;
    DS_CHECK_AS(IoError, m.zero_stage == 0 || u.padded_numel % m.world == 0,
                "[checkpoint] '{}': unit {} of {} elements does not split over {} ranks", manifest_path, u.name,
                u.padded_numel, m.world);
    chunk_.push_back(chunk);
    part_offset_.push_back(part);
    part += chunk;
  }
  for (size_t i = 0; i < m.shards.size(); ++i) {
    const CheckpointShard& s = m.shards[i];
    DS_CHECK_AS(IoError, s.rank == static_cast<int>(i) && s.partition_numel == part,
                "[checkpoint] '{}': shard entry {} (rank {}, {} elements) does not match the layout ({} elements)",
                manifest_path, i, s.rank, s.partition_numel, part);
    const std::string path = (fs::path(tag_dir_) / s.file).string();
    DS_CHECK_AS(IoError, fs::exists(path), "[checkpoint] '{}' is missing (rank {} of {}); the checkpoint is "
                "incomplete: load an earlier tag or copy the file back", path, s.rank, m.world);
    const int64_t size = static_cast<int64_t>(fs::file_size(path));
    DS_CHECK_AS(IoError, size == s.bytes, "[checkpoint] '{}' has {} bytes but the manifest says {}: the file is "
                "truncated or was replaced; load an earlier tag", path, size, s.bytes);
    if (verify) {
      const MappedFile raw = MappedFile::open(path, "checkpoint", "a checkpoint shard");
      const uint32_t crc = crc_of(raw.data(), raw.size());
      DS_CHECK_AS(IoError, crc == s.crc32, "[checkpoint] '{}': CRC-32 {:08x} does not match the manifest's {:08x}: "
                  "the file is corrupt; load an earlier tag", path, crc, s.crc32);
    }
    files_.push_back(SafetensorsFile::open(path));
    for (const char* t : kCkptTensors) {
      const SafetensorsView& v = files_.back().get(t);
      DS_CHECK_AS(IoError, v.dtype == "F32" && v.numel() == part, "[checkpoint] '{}': tensor {} is {} x {}, "
                  "expected F32 x {}", path, t, v.dtype, v.numel(), part);
    }
  }
}

void CheckpointReader::read(const std::string& tensor, int64_t begin, int64_t n, float* out) const {
  const CheckpointManifest& m = manifest_;
  const int64_t end = begin + n;
  for (size_t i = 0; i < m.units.size(); ++i) {
    const CheckpointUnit& u = m.units[i];
    if (u.offset + u.padded_numel <= begin || u.offset >= end) continue;
    for (size_t r = 0; r < files_.size(); ++r) {
      const int64_t own = u.offset + static_cast<int64_t>(r) * chunk_[i];
      const int64_t lo = std::max(begin, own), hi = std::min(end, own + chunk_[i]);
      if (lo >= hi) continue;
      const auto* src = static_cast<const uint8_t*>(files_[r].get(tensor).data);
      std::memcpy(out + (lo - begin), src + (part_offset_[i] + lo - own) * int64_t(sizeof(float)),
                  static_cast<size_t>(hi - lo) * sizeof(float));
    }
  }
}

std::vector<float> CheckpointReader::read_param(const CheckpointParam& p, const std::string& tensor) const {
  std::vector<float> out(static_cast<size_t>(p.numel()));
  read(tensor, p.offset, p.numel(), out.data());
  return out;
}

const CheckpointParam& CheckpointReader::param(const std::string& name) const {
  for (const CheckpointParam& p : manifest_.params)
    if (p.name == name) return p;
  std::vector<std::string> names;
  for (const CheckpointParam& p : manifest_.params) names.push_back(p.name);
  DS_THROW(IoError, "[checkpoint] '{}' holds no parameter '{}'; closest: {}", tag_dir_, name,
           quoted_list(closest_names(name, names, 3)));
}

// ------------------------------------------------------------------------------------------------------ writing

namespace {

// Moves the complete directory `saving` to `final_dir`. When a checkpoint of that tag exists, the two are exchanged
// in one step (renameat2 RENAME_EXCHANGE), so a complete checkpoint is always at final_dir; file systems without
// the exchange (NFS, some network file systems) get the old one renamed aside first, which leaves a moment with no
// checkpoint at final_dir but never a partial one. `latest` still names the previous tag until the caller updates it.
void publish(const fs::path& saving, const fs::path& final_dir, const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(final_dir)) {
    DS_CHECK_AS(IoError, ::rename(saving.c_str(), final_dir.c_str()) == 0, "[checkpoint] cannot rename '{}' to '{}': "
                "{}", saving.string(), final_dir.string(), std::strerror(errno));
  } else if (::renameat2(AT_FDCWD, saving.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
    fs::remove_all(saving, ec);  // now the old checkpoint
  } else {
    DS_CHECK_AS(IoError, errno == EINVAL || errno == ENOSYS || errno == ENOTSUP, "[checkpoint] cannot replace '{}' "
                "with the new checkpoint: {}", final_dir.string(), std::strerror(errno));
    const fs::path old = final_dir.parent_path() / ("." + final_dir.filename().string() + ".old");
    fs::remove_all(old, ec);
    const bool moved =
        ::rename(final_dir.c_str(), old.c_str()) == 0 && ::rename(saving.c_str(), final_dir.c_str()) == 0;
    DS_CHECK_AS(IoError, moved, "[checkpoint] cannot replace '{}' with the new checkpoint: {}", final_dir.string(),
                std::strerror(errno));
    fs::remove_all(old, ec);
  }
  fsync_dir(dir);
}

// A rank's shard, streamed one state tile at a time through the optimizer-state store (never the whole state at
// once). The tensors are in the order write_safetensors would give them (by name), so the bytes are the same.
void write_shard(const std::string& path, ZeroOptimizer& optimizer) {
  zero::OptimizerStateStore& state = optimizer.state_store();
  const int64_t n = optimizer.partition_numel();
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  const std::vector<int64_t> shape = {n};
  SafetensorsWriter out(path, {{"exp_avg", "F32", shape, nullptr, bytes},
                               {"exp_avg_sq", "F32", shape, nullptr, bytes},
                               {"fp32", "F32", shape, nullptr, bytes}});
  for (const zero::StateKind kind : {zero::StateKind::exp_avg, zero::StateKind::exp_avg_sq}) {
    for (int64_t t = 0; t < state.tile_count(); ++t) {
      const zero::StateTile tile = state.acquire(t, zero::mask_of(kind), zero::TileAccess::read);
      out.write(tile.data(kind), static_cast<size_t>(tile.count) * sizeof(float));
      state.release(tile);
    }
  }
  // "fp32": the owned parameters (in mixed precision the master weights, which are read through the store too).
  std::vector<float> piece(static_cast<size_t>(std::min(n, state.tile_numel())));
  for (int64_t t = 0; t < state.tile_count(); ++t) {
    const int64_t count = state.tile_size(t);
    optimizer.read_owned_params(state.tile_begin(t), count, piece.data());
    out.write(piece.data(), static_cast<size_t>(count) * sizeof(float));
  }
  out.commit();
}

}  // namespace

void write_checkpoint(Communicator& comm, const std::string& dir, const std::string& tag, const ParameterStore& store,
                      ZeroOptimizer& optimizer, CheckpointManifest meta) {
  const int rank = comm.rank(), world = comm.size();
  DS_CHECK_AS(IoError, !tag.empty() && tag.find('/') == std::string::npos && tag[0] != '.',
              "[checkpoint] tag '{}' must be a plain name (no '/', not starting with '.')", tag);
  const fs::path final_dir = fs::path(dir) / tag;
  const fs::path saving = fs::path(dir) / ("." + tag + ".saving");
  if (rank == 0) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    DS_CHECK_AS(IoError, !ec, "[checkpoint] cannot create '{}': {}; check --save", dir, ec.message());
    fs::remove_all(saving, ec);  // left by a run that died while saving
    fs::create_directories(saving, ec);
    DS_CHECK_AS(IoError, !ec, "[checkpoint] cannot create '{}': {}", saving.string(), ec.message());
  }
  comm.barrier();

  const int stage = optimizer.stage();
  const bool writes = stage > 0 || rank == 0;  // stage 0: every rank holds the same state
  int32_t info[5] = {0, 0, 0, 0, 1};          // bytes (lo, hi), crc, written, ok
  std::string failure;                        // this rank's error, raised once every rank knows
  if (writes) try {
    const std::string path = (saving / shard_name(rank)).string();
    write_shard(path, optimizer);
    const MappedFile raw = MappedFile::open(path, "checkpoint", "a checkpoint shard");
    const auto size = static_cast<uint64_t>(raw.size());
    info[0] = static_cast<int32_t>(size & 0xffffffffu);
    info[1] = static_cast<int32_t>(size >> 32);
    info[2] = static_cast<int32_t>(crc_of(raw.data(), raw.size()));
    info[3] = 1;
  } catch (const std::exception& e) {
    failure = e.what();
    info[4] = 0;
  }
  std::vector<int32_t> all(static_cast<size_t>(5 * world));
  comm.all_gather(info, all.data(), 5, DType::i32);
  if (!failure.empty()) throw IoError(failure);
  for (int r = 0; r < world; ++r) {
    DS_CHECK_AS(IoError, all[static_cast<size_t>(5 * r + 4)] == 1, "[checkpoint] rank {} could not write its shard "
                "of '{}' (its error is in its log); the previous checkpoint and 'latest' are unchanged", r,
                final_dir.string());
  }
  maybe_die_mid_save(rank);

  int32_t published = 1;
  if (rank == 0) try {
    meta.tag = tag;
    meta.zero_stage = stage;
    meta.world = world;
    meta.optimizer_steps = optimizer.step_count();
    meta.units.clear();
    for (const ParamUnit& u : store.units()) meta.units.push_back({u.name, u.offset, u.numel, u.padded_numel});
    meta.params.clear();
    for (const Parameter& p : store.all())
      meta.params.push_back({p.name, std::vector<int64_t>(p.shape.begin(), p.shape.end()), p.offset});
    meta.shards.clear();
    for (int r = 0; r < world; ++r) {
      const int32_t* x = all.data() + 5 * r;
      if (!x[3]) continue;
      const uint64_t size = static_cast<uint32_t>(x[0]) | (static_cast<uint64_t>(static_cast<uint32_t>(x[1])) << 32);
      meta.shards.push_back({shard_name(r), r, optimizer.partition_numel(), static_cast<int64_t>(size),
                             static_cast<uint32_t>(x[2])});
    }
    write_text_atomically((saving / "manifest.json").string(), meta.to_json().dump(1) + "\n");
    publish(saving, final_dir, dir);
    write_text_atomically((fs::path(dir) / "latest").string(), tag + "\n");
  } catch (const std::exception& e) {
    failure = e.what();
    published = 0;
  }
  comm.broadcast(&published, 1, DType::i32, 0);  // every rank fails together, none waits for a rank that left
  if (!failure.empty()) throw IoError(failure);
  DS_CHECK_AS(IoError, published == 1, "[checkpoint] rank 0 could not publish '{}' (its error is in its log)",
              final_dir.string());
}

// ------------------------------------------------------------------------------------------------------ loading

namespace {

// The Adam moments of this rank's partition, one state tile at a time through the optimizer-state store: each
// partition element is found in this run's flat layout, then in the checkpoint's through the parameter holding it
// (padding, held by no parameter, is zero).
void load_moments(const CheckpointReader& reader, const ParameterStore& store, ZeroOptimizer& optimizer) {
  std::vector<std::pair<const Parameter*, const CheckpointParam*>> by_offset;
  for (const Parameter& p : store.all()) by_offset.emplace_back(&p, &reader.param(p.name));
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto& a, const auto& b) { return a.first->offset < b.first->offset; });
  // Flat elements [flat, flat + n) of this run's layout from the checkpoint's tensor `name`.
  auto read_flat = [&](const char* name, int64_t flat, int64_t n, float* out) {
    std::fill(out, out + n, 0.0f);
    auto it = std::upper_bound(by_offset.begin(), by_offset.end(), flat, [](int64_t x, const auto& e) {
      return x < e.first->offset + e.first->numel();
    });
    for (; it != by_offset.end() && it->first->offset < flat + n; ++it) {
      const Parameter& p = *it->first;
      const int64_t lo = std::max(flat, p.offset), hi = std::min(flat + n, p.offset + p.numel());
      if (lo < hi) reader.read(name, it->second->offset + (lo - p.offset), hi - lo, out + (lo - flat));
    }
  };
  zero::OptimizerStateStore& state = optimizer.state_store();
  const zero::PartitionLayout& layout = optimizer.layout();
  for (const zero::StateKind kind : {zero::StateKind::exp_avg, zero::StateKind::exp_avg_sq}) {
    for (int64_t t = 0; t < state.tile_count(); ++t) {
      const zero::StateTile tile = state.acquire(t, zero::mask_of(kind), zero::TileAccess::write);
      layout.for_partition(tile.begin, tile.begin + tile.count, [&](size_t unit, int64_t part, int64_t count) {
        const int64_t flat = layout[unit].own + (part - layout[unit].part_offset);
        read_flat(zero::state_name(kind), flat, count, tile.data(kind) + (part - tile.begin));
      });
      state.release(tile);
    }
  }
}

}  // namespace


CheckpointManifest load_checkpoint(const std::string& dir, const std::string& tag, const ParameterStore& store,
                                   ZeroOptimizer& optimizer) {
  const CheckpointReader reader(dir, tag);
  const CheckpointManifest& m = reader.manifest();
  // The same parameters, in any layout.
  std::vector<std::string> problems;
  for (const Parameter& p : store.all()) {
    const CheckpointParam* saved = nullptr;
    for (const CheckpointParam& q : m.params)
      if (q.name == p.name) saved = &q;
    if (!saved) {
      problems.push_back(fmt::format("'{}' is missing", p.name));
    } else if (saved->shape != std::vector<int64_t>(p.shape.begin(), p.shape.end())) {
      problems.push_back(fmt::format("'{}' is {} in the checkpoint but {} here", p.name, dims_str(saved->shape),
                                     dims_str(std::vector<int64_t>(p.shape.begin(), p.shape.end()))));
    }
    if (problems.size() >= 3) break;
  }
  if (m.params.size() != store.all().size() && problems.empty())
    problems.push_back(fmt::format("it holds {} parameters, this model {}", m.params.size(), store.all().size()));
  DS_CHECK_AS(IoError, problems.empty(), "[checkpoint] '{}' is from another model ({}): {}. Load it with the model "
              "it was saved with (--model)", reader.tag_dir(), m.model.dump(), fmt::join(problems, "; "));
  if (optimizer.rank() == 0 && (m.world != optimizer.world() || m.zero_stage != optimizer.stage())) {
    log_info("[checkpoint] '{}' was saved at world {} stage {}; loading it at world {} stage {}", reader.tag_dir(),
             m.world, m.zero_stage, optimizer.world(), optimizer.stage());
  }
  // The parameters, parameter by parameter (every rank keeps all of them below stage 3).
  for (const Parameter& p : store.all()) {
    const std::vector<float> values = reader.read_param(reader.param(p.name), "fp32");
    optimizer.set_parameters(p.offset, values.data(), p.numel());
  }
  load_moments(reader, store, optimizer);
  optimizer.set_step_count(m.optimizer_steps);
  return m;
}

// -------------------------------------------------------------------------------------------------- consolidation

void consolidate_checkpoint(const CheckpointReader& reader, const std::string& out_path, const std::string& dtype) {
  DS_CHECK_AS(ConfigError, dtype == "fp32" || dtype == "bf16", "[checkpoint] --dtype must be fp32 or bf16, got '{}'",
              dtype);
  const bool bf16 = dtype == "bf16";
  std::vector<SafetensorsEntry> entries;
  for (const CheckpointParam& p : reader.manifest().params) {
    entries.push_back({p.name, bf16 ? "BF16" : "F32", p.shape, nullptr,
                       static_cast<size_t>(p.numel()) * (bf16 ? 2 : 4)});
  }
  // "ds_model" carries the shape that tensor shapes alone do not give (n_head), so the file serves as it is.
  SafetensorsWriter out(out_path, entries, {{"format", "pt"}, {"source", "dspeed ckpt consolidate"},
                                            {"ds_model", reader.manifest().model.dump()}});
  std::vector<uint16_t> half;
  for (const CheckpointParam& p : reader.manifest().params) {
    const std::vector<float> values = reader.read_param(p, "fp32");
    if (bf16) {
      half.resize(values.size());
      cpu::f32_to_bf16(half.data(), values.data(), values.size());
      out.write(half.data(), half.size() * 2);
    } else {
      out.write(values.data(), values.size() * 4);
    }
  }
  out.commit();
}

}  // namespace ds
