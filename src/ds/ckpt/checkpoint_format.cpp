// The checkpoint format: manifest (de)serialisation, the reader, consolidation (checkpoint_format.h).
#include "ds/ckpt/checkpoint_format.h"

#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include <fmt/ranges.h>

#include "ds/core/convert.h"
#include "ds/core/error.h"
#include "ds/core/json_input.h"
#include "ds/core/strings.h"
#include "ds/core/tp_split.h"

namespace ds::ckpt {
namespace fs = std::filesystem;

std::string checkpoint_shape_str(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

std::string checkpoint_shard_name(int rank, bool experts) {
  return fmt::format("{}rank_{:05d}.safetensors", experts ? "experts_" : "", rank);
}

uint32_t checkpoint_crc32(const uint8_t* data, size_t n) {
  return static_cast<uint32_t>(crc32_z(crc32_z(0L, Z_NULL, 0), data, n));
}

namespace {
template <typename T>
struct IsVector : std::false_type {};
template <typename T>
struct IsVector<std::vector<T>> : std::true_type {};

template <typename T>
T get_field(const nlohmann::json& j, const char* key, const std::string& where) {
  DS_CHECK_AS(IoError, j.is_object() && j.contains(key), "[checkpoint] {}: the field '{}' is missing; the manifest "
              "is damaged or was not written by dspeed", where, key);
  const nlohmann::json& v = j.at(key);
  auto wrong = [&](std::string_view expected) {
    return IoError(fmt::format("[checkpoint] {}: the field '{}' should be {}, found {}; the manifest is damaged or "
                               "was not written by dspeed", where, key, expected, json_excerpt(v)));
  };
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    const std::optional<T> i = json_integer<T>(v);
    if (!i) throw wrong(fmt::format("an integer in [{}, {}]", std::numeric_limits<T>::min(),
                                    std::numeric_limits<T>::max()));
    return *i;
  } else if constexpr (IsVector<T>::value) {
    using E = typename T::value_type;
    if (!v.is_array()) throw wrong("a list of integers");
    T out;
    for (const auto& e : v) {
      const std::optional<E> i = json_integer<E>(e);
      if (!i) throw wrong("a list of integers");
      out.push_back(*i);
    }
    return out;
  } else {
    try {
      return v.get<T>();
    } catch (const nlohmann::json::exception&) {
      throw wrong(std::is_same_v<T, std::string> ? "a string" : "an object or list");
    }
  }
}

}  // namespace

namespace {
int64_t product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

nlohmann::json layout_json(const CheckpointLayout& l) {
  nlohmann::json j = {{"tp_rank", l.tp_rank}, {"pp_stage", l.pp_stage}, {"units", nlohmann::json::array()},
                      {"params", nlohmann::json::array()}, {"shards", nlohmann::json::array()}};
  if (l.ep_rank >= 0) j["ep_rank"] = l.ep_rank;
  for (const auto& u : l.units)
    j["units"].push_back(
        {{"name", u.name}, {"offset", u.offset}, {"numel", u.numel}, {"padded_numel", u.padded_numel}});
  for (const auto& p : l.params) {
    nlohmann::json e = {{"name", p.name}, {"shape", p.shape}, {"offset", p.offset}};
    if (p.split_dim >= 0) e["split"] = {{"dim", p.split_dim}, {"blocks", p.split_blocks}, {"full_shape", p.full_shape}};
    j["params"].push_back(std::move(e));
  }
  for (const auto& s : l.shards)
    j["shards"].push_back({{"file", s.file}, {"rank", s.rank}, {"partition_numel", s.partition_numel},
                           {"bytes", s.bytes}, {"crc32", s.crc32}});
  return j;
}

// One layout's units, parameters and shards from `j` (a version-2 layout, or a version-1 manifest's top level).
CheckpointLayout parse_layout(const nlohmann::json& j, const std::string& where) {
  CheckpointLayout l;
  for (const auto& u : get_field<nlohmann::json>(j, "units", where))
    l.units.push_back({get_field<std::string>(u, "name", where), get_field<int64_t>(u, "offset", where),
                       get_field<int64_t>(u, "numel", where), get_field<int64_t>(u, "padded_numel", where)});
  for (const auto& p : get_field<nlohmann::json>(j, "params", where)) {
    CheckpointParam q;
    q.name = get_field<std::string>(p, "name", where);
    q.shape = get_field<std::vector<int64_t>>(p, "shape", where);
    q.offset = get_field<int64_t>(p, "offset", where);
    if (p.is_object() && p.contains("split")) {
      const nlohmann::json& sp = p["split"];
      q.split_dim = get_field<int>(sp, "dim", where);
      q.split_blocks = get_field<int>(sp, "blocks", where);
      q.full_shape = get_field<std::vector<int64_t>>(sp, "full_shape", where);
    } else {
      q.full_shape = q.shape;
    }
    l.params.push_back(std::move(q));
  }
  for (const auto& s : get_field<nlohmann::json>(j, "shards", where))
    l.shards.push_back({get_field<std::string>(s, "file", where), get_field<int>(s, "rank", where),
                        get_field<int64_t>(s, "partition_numel", where), get_field<int64_t>(s, "bytes", where),
                        get_field<uint32_t>(s, "crc32", where)});
  return l;
}

// The checks that make a layout safe to read: units back to back from 0, each padded, parameters inside them, a
// split that cuts the whole shape into exactly the shape held, shard files inside the checkpoint's directory.
void check_layout(const CheckpointLayout& l, const CheckpointManifest& m, const std::string& where) {
  DS_CHECK_AS(IoError, !l.units.empty(), "[checkpoint] {}: a layout with no units is not valid", where);
  int64_t total = 0;
  for (const CheckpointUnit& u : l.units) {
    DS_CHECK_AS(IoError, u.offset == total && u.numel >= 0 && u.padded_numel >= u.numel &&
                             u.padded_numel <= std::numeric_limits<int64_t>::max() - total,
                "[checkpoint] {}: unit '{}' (offset {}, {} elements padded to {}) does not follow the previous "
                "units (which end at {}); the manifest is damaged", where, u.name, u.offset, u.numel, u.padded_numel,
                total);
    total += u.padded_numel;
  }
  auto check_shape = [&](const CheckpointParam& p, const std::vector<int64_t>& shape) {
    DS_CHECK_AS(IoError, shape.size() <= static_cast<size_t>(Shape::kMaxDims), "[checkpoint] {}: parameter '{}' has "
                "{} dimensions; the manifest is damaged", where, p.name, shape.size());
    int64_t n = 1;
    for (const int64_t d : shape) {
      DS_CHECK_AS(IoError, d >= 0 && (d == 0 || n <= total / d), "[checkpoint] {}: parameter '{}' has shape {}, "
                  "larger than the {} elements the units hold; the manifest is damaged", where, p.name,
                  checkpoint_shape_str(shape), total);
      n *= d;
    }
    return n;
  };
  for (const CheckpointParam& p : l.params) {
    const int64_t n = check_shape(p, p.shape);
    DS_CHECK_AS(IoError, p.offset >= 0 && p.offset <= total - n, "[checkpoint] {}: parameter '{}' ({} elements at "
                "offset {}) lies outside the {} elements the units hold; the manifest is damaged", where, p.name, n,
                p.offset, total);
    if (p.split_dim < 0) {
      DS_CHECK_AS(IoError, p.full_shape == p.shape, "[checkpoint] {}: parameter '{}' is whole but its full shape {} "
                  "is not its shape {}; the manifest is damaged", where, p.name, checkpoint_shape_str(p.full_shape),
                  checkpoint_shape_str(p.shape));
      continue;
    }
    const bool form = p.split_dim < static_cast<int>(p.full_shape.size()) && p.full_shape.size() == p.shape.size() &&
                      p.split_blocks >= 1 && p.full_shape.size() <= static_cast<size_t>(Shape::kMaxDims);
    bool fits = form;
    if (form) {
      for (const int64_t d : p.full_shape) fits = fits && d >= 0 && d <= (int64_t(1) << 40);
      fits = fits && p.full_shape[p.split_dim] % p.split_blocks == 0;
    }
    if (fits) {
      const TpSplit t{p.split_dim, p.split_blocks, l.tp_rank, m.tp,
                      Shape(p.full_shape.begin(), p.full_shape.end())};
      fits = t.local_shape(t.full) == Shape(p.shape.begin(), p.shape.end());
    }
    DS_CHECK_AS(IoError, fits, "[checkpoint] {}: parameter '{}' of shape {} is not tensor-parallel rank {}'s share "
                "(of {}) of a {} parameter split along dimension {} in {} block(s); the manifest is damaged", where,
                p.name, checkpoint_shape_str(p.shape), l.tp_rank, m.tp, checkpoint_shape_str(p.full_shape),
                p.split_dim, p.split_blocks);
  }
  for (const CheckpointShard& s : l.shards) {
    // A shard is a file in the checkpoint's own directory: a manifest must not point the reader anywhere else.
    DS_CHECK_AS(IoError, !s.file.empty() && s.file.find('/') == std::string::npos && s.file != "." && s.file != "..",
                "[checkpoint] {}: shard file '{}' is not a file name in the checkpoint's directory; the manifest is "
                "damaged", where, s.file.substr(0, 200));
  }
  const size_t want_shards = m.zero_stage == 0 ? 1 : static_cast<size_t>(l.ep_rank >= 0 ? m.world / m.ep : m.world);
  DS_CHECK_AS(IoError, l.shards.size() == want_shards, "[checkpoint] {}: a stage-{} checkpoint of {} data-parallel "
              "rank(s) has {} shard(s) per {}layout, but the manifest lists {}", where, m.zero_stage, m.world,
              want_shards, l.ep_rank >= 0 ? "expert " : "", l.shards.size());
}
}  // namespace

std::string checkpoint_layout_text(const CheckpointLayout& layout) { return layout_json(layout).dump(); }

CheckpointLayout parse_checkpoint_layout(const std::string& text) {
  const nlohmann::json j = nlohmann::json::parse(text);  // written by checkpoint_layout_text in this job
  CheckpointLayout l = parse_layout(j, "a rank's layout");
  l.tp_rank = get_field<int>(j, "tp_rank", "a rank's layout");
  l.pp_stage = get_field<int>(j, "pp_stage", "a rank's layout");
  l.ep_rank = j.value("ep_rank", -1);
  return l;
}

int64_t CheckpointParam::numel() const { return product(shape); }
int64_t CheckpointParam::full_numel() const { return product(full_shape); }

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
  j["parallel"] = {{"data", world}, {"tensor", tp}, {"pipeline", pp}, {"expert", ep}};
  j["layouts"] = nlohmann::json::array();
  for (const CheckpointLayout& l : layouts) j["layouts"].push_back(layout_json(l));
  j["config"] = config;
  j["engine_state"] = engine_state;
  j["client_state"] = client_state;
  return j;
}

CheckpointManifest CheckpointManifest::from_json(const nlohmann::json& j, const std::string& where) {
  const auto format = j.is_object() ? j.find("format") : j.end();
  DS_CHECK_AS(IoError, format != j.end() && format->is_string() && *format == "dspeed-checkpoint",
              "[checkpoint] {}: not a dspeed checkpoint manifest (no \"format\": \"dspeed-checkpoint\")", where);
  const int version = get_field<int>(j, "version", where);
  DS_CHECK_AS(IoError, version == 1 || version == kVersion, "[checkpoint] {}: manifest version {} is not supported "
              "(this build reads versions 1 and {}); use the dspeed that wrote it", where, version, kVersion);
  CheckpointManifest m;
  m.tag = get_field<std::string>(j, "tag", where);
  m.global_steps = get_field<int64_t>(j, "global_steps", where);
  m.global_samples = get_field<int64_t>(j, "global_samples", where);
  m.optimizer_steps = get_field<int64_t>(j, "optimizer_steps", where);
  m.model = get_field<nlohmann::json>(j, "model", where);
  m.zero_stage = get_field<int>(j, "zero_stage", where);
  m.world = get_field<int>(j, "world", where);
  if (version == 1) {  // one layout at the top level
    m.layouts.push_back(parse_layout(j, where));
  } else {
    const nlohmann::json parallel = get_field<nlohmann::json>(j, "parallel", where);
    m.tp = get_field<int>(parallel, "tensor", where);
    m.pp = get_field<int>(parallel, "pipeline", where);
    DS_CHECK_AS(IoError, get_field<int>(parallel, "data", where) == m.world, "[checkpoint] {}: 'parallel.data' and "
                "'world' disagree; the manifest is damaged", where);
    const nlohmann::json layouts = get_field<nlohmann::json>(j, "layouts", where);
    DS_CHECK_AS(IoError, layouts.is_array(), "[checkpoint] {}: 'layouts' should be a list", where);
    for (const auto& l : layouts) {
      CheckpointLayout layout = parse_layout(l, where);
      layout.tp_rank = get_field<int>(l, "tp_rank", where);
      layout.pp_stage = get_field<int>(l, "pp_stage", where);
      if (l.is_object() && l.contains("ep_rank")) layout.ep_rank = get_field<int>(l, "ep_rank", where);
      m.layouts.push_back(std::move(layout));
    }
    if (parallel.is_object() && parallel.contains("expert")) m.ep = get_field<int>(parallel, "expert", where);
  }
  m.config = j.value("config", nlohmann::json::object());
  m.engine_state = j.value("engine_state", nlohmann::json::object());
  m.client_state = j.value("client_state", nlohmann::json::object());
  for (const nlohmann::json* v : {&m.config, &m.engine_state, &m.client_state})
    DS_CHECK_AS(IoError, v->is_object(), "[checkpoint] {}: 'config', 'engine_state' and 'client_state' should be "
                "objects, found {}; the manifest is damaged", where, json_excerpt(*v));
  const auto expert_layouts = static_cast<int64_t>(
      std::count_if(m.layouts.begin(), m.layouts.end(), [](const CheckpointLayout& l) { return l.ep_rank >= 0; }));
  DS_CHECK_AS(IoError, m.world >= 1 && m.zero_stage >= 0 && m.zero_stage <= 3 && m.tp >= 1 && m.pp >= 1 &&
                           m.ep >= 1 && m.world % m.ep == 0 && (expert_layouts == 0 || expert_layouts == m.ep) &&
                           int64_t(m.tp) * m.pp + expert_layouts == static_cast<int64_t>(m.layouts.size()),
              "[checkpoint] {}: data-parallel {} / stage {} / tensor-parallel {} x pipeline {} / expert-parallel {} "
              "with {} layout(s) is not a valid layout", where, m.world, m.zero_stage, m.tp, m.pp, m.ep,
              m.layouts.size());
  std::vector<bool> seen(m.layouts.size(), false), seen_expert(static_cast<size_t>(m.ep), false);
  for (const CheckpointLayout& l : m.layouts) {
    if (l.ep_rank >= 0) {
      DS_CHECK_AS(IoError, l.ep_rank < m.ep && l.tp_rank == 0 && l.pp_stage == 0 &&
                               !seen_expert[static_cast<size_t>(l.ep_rank)],
                  "[checkpoint] {}: expert layout {} is out of range or listed twice; the manifest is damaged", where,
                  l.ep_rank);
      seen_expert[static_cast<size_t>(l.ep_rank)] = true;
      check_layout(l, m, where);
      continue;
    }
    DS_CHECK_AS(IoError, l.tp_rank >= 0 && l.tp_rank < m.tp && l.pp_stage >= 0 && l.pp_stage < m.pp &&
                             !seen[static_cast<size_t>(l.pp_stage) * m.tp + l.tp_rank],
                "[checkpoint] {}: layout (tensor rank {}, stage {}) is out of range or listed twice; the manifest is "
                "damaged", where, l.tp_rank, l.pp_stage);
    seen[static_cast<size_t>(l.pp_stage) * m.tp + l.tp_rank] = true;
    check_layout(l, m, where);
  }
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
  JsonLimits limits;
  limits.max_bytes = size_t(256) << 20;  // a manifest lists units and ranks: kilobytes for real models
  const std::string problem = parse_json_bounded(ss.str(), limits, j);
  DS_CHECK_AS(IoError, problem.empty(), "[checkpoint] '{}' is not a valid manifest ({}); the file is damaged: load "
              "an earlier tag", manifest_path, problem);
  manifest_ = CheckpointManifest::from_json(j, "'" + manifest_path + "'");
  const CheckpointManifest& m = manifest_;
  for (const CheckpointLayout& desc : m.layouts) {
    Layout& l = layouts_.emplace_back();
    int64_t part = 0;
    const auto ranks = static_cast<int64_t>(desc.shards.size());  // checked: the layout's partitions
    for (const CheckpointUnit& u : desc.units) {
      const int64_t chunk = m.zero_stage == 0 ? u.padded_numel : u.padded_numel / ranks;
      DS_CHECK_AS(IoError, m.zero_stage == 0 || u.padded_numel % ranks == 0,
                  "[checkpoint] '{}': unit {} of {} elements does not split over {} ranks", manifest_path, u.name,
                  u.padded_numel, ranks);
      l.chunk.push_back(chunk);
      l.part_offset.push_back(part);
      part += chunk;
    }
    for (const CheckpointShard& s : desc.shards) {
      DS_CHECK_AS(IoError, s.partition_numel == part, "[checkpoint] '{}': shard {} (rank {}, {} elements) does not "
                  "match its layout ({} elements)", manifest_path, s.file, s.rank, s.partition_numel, part);
      const std::string path = (fs::path(tag_dir_) / s.file).string();
      DS_CHECK_AS(IoError, fs::exists(path), "[checkpoint] '{}' is missing (rank {}); the checkpoint is incomplete: "
                  "load an earlier tag or copy the file back", path, s.rank);
      const int64_t size = static_cast<int64_t>(fs::file_size(path));
      DS_CHECK_AS(IoError, size == s.bytes, "[checkpoint] '{}' has {} bytes but the manifest says {}: the file is "
                  "truncated or was replaced; load an earlier tag", path, size, s.bytes);
      if (verify) {
        const MappedFile raw = MappedFile::open(path, "checkpoint", "a checkpoint shard");
        const uint32_t crc = checkpoint_crc32(raw.data(), raw.size());
        DS_CHECK_AS(IoError, crc == s.crc32, "[checkpoint] '{}': CRC-32 {:08x} does not match the manifest's "
                    "{:08x}: the file is corrupt; load an earlier tag", path, crc, s.crc32);
      }
      l.files.push_back(SafetensorsFile::open(path));
      for (const char* t : kCkptTensors) {
        const SafetensorsView& v = l.files.back().get(t);
        DS_CHECK_AS(IoError, v.dtype == "F32" && v.numel() == part, "[checkpoint] '{}': tensor {} is {} x {}, "
                    "expected F32 x {}", path, t, v.dtype, v.numel(), part);
      }
    }
  }
  // The whole parameters, in the order of the stages and, within one, of the first tensor-parallel rank's layout.
  for (int stage = 0; stage < m.pp; ++stage)
    for (const CheckpointLayout& desc : m.layouts) {
      if (desc.pp_stage != stage || desc.tp_rank != 0) continue;
      for (const CheckpointParam& p : desc.params) {
        if (std::any_of(params_.begin(), params_.end(), [&](const CheckpointParam& q) { return q.name == p.name; }))
          continue;
        params_.push_back({p.name, p.full_shape, 0, -1, 1, p.full_shape});
      }
    }
}

void CheckpointReader::read(size_t l, const std::string& tensor, int64_t begin, int64_t n, float* out) const {
  const CheckpointLayout& desc = manifest_.layouts[l];
  const Layout& lay = layouts_[l];
  const int64_t end = begin + n;
  for (size_t i = 0; i < desc.units.size(); ++i) {
    const CheckpointUnit& u = desc.units[i];
    if (u.offset + u.padded_numel <= begin || u.offset >= end) continue;
    for (size_t r = 0; r < lay.files.size(); ++r) {
      const int64_t own = u.offset + static_cast<int64_t>(r) * lay.chunk[i];
      const int64_t lo = std::max(begin, own), hi = std::min(end, own + lay.chunk[i]);
      if (lo >= hi) continue;
      const auto* src = static_cast<const uint8_t*>(lay.files[r].get(tensor).data);
      std::memcpy(out + (lo - begin), src + (lay.part_offset[i] + lo - own) * int64_t(sizeof(float)),
                  static_cast<size_t>(hi - lo) * sizeof(float));
    }
  }
}

std::vector<float> CheckpointReader::read_param(const CheckpointParam& whole, const std::string& tensor) const {
  std::vector<float> out(static_cast<size_t>(whole.full_numel()));
  read_param(whole, tensor, out.data());
  return out;
}

void CheckpointReader::read_param(const CheckpointParam& whole, const std::string& tensor, float* out) const {
  std::vector<bool> have(static_cast<size_t>(manifest_.tp), false);
  std::vector<float> share;
  for (size_t l = 0; l < manifest_.layouts.size(); ++l) {
    const CheckpointLayout& desc = manifest_.layouts[l];
    for (const CheckpointParam& p : desc.params) {
      if (p.name != whole.name) continue;
      DS_CHECK_AS(IoError, p.full_shape == whole.full_shape, "[checkpoint] '{}': parameter '{}' is {} in one layout "
                  "and {} in another; the manifest is damaged", tag_dir_, p.name, checkpoint_shape_str(p.full_shape),
                  checkpoint_shape_str(whole.full_shape));
      if (p.split_dim < 0) {
        read(l, tensor, p.offset, p.numel(), out);
        return;
      }
      if (have[static_cast<size_t>(desc.tp_rank)]) continue;  // a tied parameter: its other stage has it too
      share.resize(static_cast<size_t>(p.numel()));
      read(l, tensor, p.offset, p.numel(), share.data());
      TpSplit{p.split_dim, p.split_blocks, desc.tp_rank, manifest_.tp, Shape(p.full_shape.begin(), p.full_shape.end())}
          .unshard(share.data(), out);
      have[static_cast<size_t>(desc.tp_rank)] = true;
    }
  }
  const auto missing = std::find(have.begin(), have.end(), false);
  DS_CHECK_AS(IoError, missing == have.end(), "[checkpoint] '{}': no layout holds tensor-parallel rank {}'s share of "
              "'{}'; the checkpoint is incomplete", tag_dir_, missing - have.begin(), whole.name);
}

const CheckpointParam& CheckpointReader::param(const std::string& name) const {
  for (const CheckpointParam& p : params_)
    if (p.name == name) return p;
  std::vector<std::string> names;
  for (const CheckpointParam& p : params_) names.push_back(p.name);
  DS_THROW(IoError, "[checkpoint] '{}' holds no parameter '{}'; closest: {}", tag_dir_, name,
           quoted_list(closest_names(name, names, 3)));
}

// ------------------------------------------------------------------------------------------------------ writing

// -------------------------------------------------------------------------------------------------- consolidation

void consolidate_checkpoint(const CheckpointReader& reader, const std::string& out_path, const std::string& dtype) {
  DS_CHECK_AS(ConfigError, dtype == "fp32" || dtype == "bf16", "[checkpoint] --dtype must be fp32 or bf16, got '{}'",
              dtype);
  const bool bf16 = dtype == "bf16";
  std::vector<SafetensorsEntry> entries;
  for (const CheckpointParam& p : reader.params()) {
    entries.push_back({p.name, bf16 ? "BF16" : "F32", p.shape, nullptr,
                       static_cast<size_t>(p.numel()) * (bf16 ? 2 : 4)});
  }
  // "ds_model" carries the shape that tensor shapes alone do not give (n_head), so the file serves as it is.
  SafetensorsWriter out(out_path, entries, {{"format", "pt"}, {"source", "dspeed ckpt consolidate"},
                                            {"ds_model", reader.manifest().model.dump()}});
  std::vector<uint16_t> half;
  for (const CheckpointParam& p : reader.params()) {
    const std::vector<float> values = reader.read_param(p, "fp32");
    if (bf16) {
      half.resize(values.size());
      f32_to_bf16(half.data(), values.data(), values.size());
      out.write(half.data(), half.size() * 2);
    } else {
      out.write(values.data(), values.size() * 4);
    }
  }
  out.commit();
}

}  // namespace ds::ckpt
