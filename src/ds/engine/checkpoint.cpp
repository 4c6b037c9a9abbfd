// Checkpoints of a running engine: the atomic multi-rank write and the load at any layout (checkpoint.h).
#include "ds/engine/checkpoint.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <system_error>

#include <fmt/ranges.h>

#include "ds/comm/communicator.h"
#include "ds/comm/topology.h"
#include "ds/core/error.h"
#include "ds/core/file_io.h"
#include "ds/core/log.h"
#include "ds/nn/parameter.h"
#include "ds/zero/zero_optimizer.h"

namespace ds::engine {
namespace fs = std::filesystem;

namespace {

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

}  // namespace

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
void write_shard(const std::string& path, zero::ZeroOptimizer& optimizer) {
  zero::OptimizerStateStore& state = optimizer.state_store();
  optimizer.sync_offload();  // a failed swap write shows here, before anything is written
  const int64_t n = optimizer.partition_numel();
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  const std::vector<int64_t> shape = {n};
  ckpt::SafetensorsWriter out(path, {{"exp_avg", "F32", shape, nullptr, bytes},
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

namespace {
// This rank's flat layout: its units and parameters (with their tensor-parallel splits).
ckpt::CheckpointLayout layout_of(const nn::ParameterStore& store, const comm::Coords& at) {
  ckpt::CheckpointLayout l;
  l.tp_rank = at.model;
  l.pp_stage = at.pipe;
  for (const nn::ParamUnit& u : store.units()) l.units.push_back({u.name, u.offset, u.numel, u.padded_numel});
  for (const nn::Parameter& p : store.all()) {
    ckpt::CheckpointParam q;
    q.name = p.name;
    q.shape.assign(p.shape.begin(), p.shape.end());
    q.offset = p.offset;
    q.full_shape.assign(p.full_shape().begin(), p.full_shape().end());
    if (p.tp.split()) q.split_dim = p.tp.dim, q.split_blocks = p.tp.blocks;
    l.params.push_back(std::move(q));
  }
  return l;
}

// Every rank's text, gathered on every rank (texts of any length: lengths first, then the padded bytes).
std::vector<std::string> all_gather_text(comm::Communicator& comm, const std::string& text) {
  const int world = comm.size();
  const int32_t len = static_cast<int32_t>(text.size());
  std::vector<int32_t> lens(static_cast<size_t>(world));
  comm.all_gather(&len, lens.data(), 1, DType::i32);
  const int32_t words = (*std::max_element(lens.begin(), lens.end()) + 3) / 4;
  std::vector<int32_t> mine(static_cast<size_t>(words), 0), all(static_cast<size_t>(words) * world);
  std::memcpy(mine.data(), text.data(), text.size());
  comm.all_gather(mine.data(), all.data(), static_cast<size_t>(words), DType::i32);
  std::vector<std::string> out;
  for (int r = 0; r < world; ++r)
    out.emplace_back(reinterpret_cast<const char*>(all.data() + static_cast<size_t>(r) * words),
                     static_cast<size_t>(lens[r]));
  return out;
}
}  // namespace

void write_checkpoint(comm::Topology& topology, const std::string& dir, const std::string& tag,
                      const std::vector<CheckpointPart>& parts, ckpt::CheckpointManifest meta) {
  comm::Communicator& comm = topology.world();
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

  const int stage = parts.at(0).optimizer->stage();
  const comm::TopologyShape& shape = topology.shape();
  const comm::Coords at = topology.coords();
  const int ep = shape.expert;
  // Per part: every rank's shard record (bytes lo, hi, crc, written, ok) and layout text.
  struct Written {
    std::vector<int32_t> info;
    std::vector<std::string> layouts;
  };
  std::vector<Written> written;
  std::string failure;  // this rank's error, raised once every rank knows
  bool all_wrote = true;
  for (const CheckpointPart& part : parts) {
    // A layout's ranks hold the same state at stage 0, so its first one writes it. Dense layouts are per (pipe,
    // model) over the data ranks; expert layouts per expert-parallel rank over the expert-data ranks.
    const bool first = part.experts ? at.data / ep == 0 : at.data == 0;
    const bool writes = stage > 0 || first;
    int32_t info[5] = {0, 0, 0, 0, 1};
    if (writes && failure.empty()) try {
      const std::string path = (saving / ckpt::checkpoint_shard_name(rank, part.experts)).string();
      write_shard(path, *part.optimizer);
      const MappedFile raw = MappedFile::open(path, "checkpoint", "a checkpoint shard");
      const auto size = static_cast<uint64_t>(raw.size());
      info[0] = static_cast<int32_t>(size & 0xffffffffu);
      info[1] = static_cast<int32_t>(size >> 32);
      info[2] = static_cast<int32_t>(ckpt::checkpoint_crc32(raw.data(), raw.size()));
      info[3] = 1;
    } catch (const std::exception& e) {
      failure = e.what();
      info[4] = 0;
    }
    Written& w = written.emplace_back();
    w.info.resize(static_cast<size_t>(5 * world));
    comm.all_gather(info, w.info.data(), 5, DType::i32);
    std::string text;
    if (first) {
      ckpt::CheckpointLayout l = layout_of(*part.store, at);
      if (part.experts) l.ep_rank = at.data % ep;
      text = ckpt::checkpoint_layout_text(l);
    }
    w.layouts = all_gather_text(comm, text);
    for (int r = 0; r < world; ++r) all_wrote = all_wrote && w.info[static_cast<size_t>(5 * r + 4)] == 1;
  }
  if (!all_wrote && rank == 0) {
    std::error_code ec;
    fs::remove_all(saving, ec);  // nothing half-written stays beside the checkpoints
  }
  if (!failure.empty()) throw IoError(failure);
  for (const Written& w : written)
    for (int r = 0; r < world; ++r) {
      DS_CHECK_AS(IoError, w.info[static_cast<size_t>(5 * r + 4)] == 1, "[checkpoint] rank {} could not write its "
                  "shard of '{}' (its error is in its log); the previous checkpoint and 'latest' are unchanged", r,
                  final_dir.string());
    }
  maybe_die_mid_save(rank);

  int32_t published = 1;
  if (rank == 0) try {
    meta.tag = tag;
    meta.zero_stage = stage;
    meta.world = shape.data;
    meta.tp = shape.model;
    meta.pp = shape.pipe;
    meta.ep = ep;
    meta.optimizer_steps = parts[0].optimizer->step_count();
    meta.layouts.clear();
    for (size_t k = 0; k < parts.size(); ++k) {
      const bool experts = parts[k].experts;
      const Written& w = written[k];
      for (int r = 0; r < world; ++r) {
        const comm::Coords c = shape.coords_of(r);
        if (experts ? c.data / ep != 0 : c.data != 0) continue;
        ckpt::CheckpointLayout l = ckpt::parse_checkpoint_layout(w.layouts[static_cast<size_t>(r)]);
        const int ranks = experts ? shape.data / ep : shape.data;  // the layout's partitions
        for (int d = 0; d < (stage == 0 ? 1 : ranks); ++d) {  // the shards of its ranks, in partition order
          const int g = shape.rank_of({c.pipe, experts ? d * ep + c.data : d, c.model});
          const int32_t* x = w.info.data() + 5 * g;
          const uint64_t size =
              static_cast<uint32_t>(x[0]) | (static_cast<uint64_t>(static_cast<uint32_t>(x[1])) << 32);
          int64_t part = 0;
          for (const ckpt::CheckpointUnit& u : l.units) part += stage == 0 ? u.padded_numel : u.padded_numel / ranks;
          l.shards.push_back({ckpt::checkpoint_shard_name(g, experts), g, part, static_cast<int64_t>(size),
                              static_cast<uint32_t>(x[2])});
        }
        meta.layouts.push_back(std::move(l));
      }
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

// This rank's share of a whole parameter read from a checkpoint.
std::vector<float> share_of(const nn::Parameter& p, std::vector<float> whole) {
  if (!p.tp.split()) return whole;
  std::vector<float> mine(static_cast<size_t>(p.numel()));
  p.tp.shard(whole.data(), mine.data());
  return mine;
}

// The Adam moments of this rank's partition, one state tile at a time through the optimizer-state store: each
// partition element is found in this run's flat layout, then in its parameter's share, read whole from the
// checkpoint once per parameter and moment (padding, held by no parameter, is zero).
void load_moments(const ckpt::CheckpointReader& reader, const nn::ParameterStore& store,
                  zero::ZeroOptimizer& optimizer) {
  std::vector<const nn::Parameter*> by_offset;
  for (const nn::Parameter& p : store.all()) by_offset.push_back(&p);
  std::sort(by_offset.begin(), by_offset.end(), [](const auto* a, const auto* b) { return a->offset < b->offset; });
  const nn::Parameter* cached = nullptr;  // the parameter whose share of the moment is in `values`
  std::vector<float> values;
  // Flat elements [flat, flat + n) of this run's layout from the checkpoint's tensor `name`.
  auto read_flat = [&](const char* name, int64_t flat, int64_t n, float* out) {
    std::fill(out, out + n, 0.0f);
    auto it = std::upper_bound(by_offset.begin(), by_offset.end(), flat,
                               [](int64_t x, const nn::Parameter* p) { return x < p->offset + p->numel(); });
    for (; it != by_offset.end() && (*it)->offset < flat + n; ++it) {
      const nn::Parameter& p = **it;
      const int64_t lo = std::max(flat, p.offset), hi = std::min(flat + n, p.offset + p.numel());
      if (lo >= hi) continue;
      if (cached != &p) {
        values = share_of(p, reader.read_param(reader.param(p.name), name));
        cached = &p;
      }
      std::copy(values.begin() + (lo - p.offset), values.begin() + (hi - p.offset), out + (lo - flat));
    }
  };
  zero::OptimizerStateStore& state = optimizer.state_store();
  const zero::PartitionLayout& layout = optimizer.layout();
  for (const zero::StateKind kind : {zero::StateKind::exp_avg, zero::StateKind::exp_avg_sq}) {
    cached = nullptr;
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

ckpt::CheckpointManifest load_checkpoint(const std::string& dir, const std::string& tag,
                                         const std::vector<CheckpointPart>& parts, size_t model_params) {
  const ckpt::CheckpointReader reader(dir, tag);
  const ckpt::CheckpointManifest& m = reader.manifest();
  // The same parameters, in any layout.
  std::vector<std::string> problems;
  size_t held = 0;
  for (const CheckpointPart& part : parts) {
    held += part.store->all().size();
    for (const nn::Parameter& p : part.store->all()) {
      const ckpt::CheckpointParam* saved = nullptr;
      for (const ckpt::CheckpointParam& q : reader.params())
        if (q.name == p.name) saved = &q;
      const std::vector<int64_t> shape(p.full_shape().begin(), p.full_shape().end());
      if (!saved) {
        problems.push_back(fmt::format("'{}' is missing", p.name));
      } else if (saved->shape != shape) {
        problems.push_back(fmt::format("'{}' is {} in the checkpoint but {} here", p.name,
                                       ckpt::checkpoint_shape_str(saved->shape), ckpt::checkpoint_shape_str(shape)));
      }
      if (problems.size() >= 3) break;
    }
  }
  if (model_params == 0) model_params = held;
  if (reader.params().size() != model_params && problems.empty())
    problems.push_back(fmt::format("it holds {} parameters, this model {}", reader.params().size(), model_params));
  DS_CHECK_AS(IoError, problems.empty(), "[checkpoint] '{}' is from another model ({}): {}. Load it with the model "
              "it was saved with (--model)", reader.tag_dir(), m.model.dump(), fmt::join(problems, "; "));
  for (const CheckpointPart& part : parts) {
    // The parameters, parameter by parameter (every rank keeps all of its share below stage 3).
    for (const nn::Parameter& p : part.store->all()) {
      const std::vector<float> values = share_of(p, reader.read_param(reader.param(p.name), "fp32"));
      part.optimizer->set_parameters(p.offset, values.data(), p.numel());
    }
    load_moments(reader, *part.store, *part.optimizer);
    part.optimizer->set_step_count(m.optimizer_steps);
  }
  return m;
}

}  // namespace ds::engine
