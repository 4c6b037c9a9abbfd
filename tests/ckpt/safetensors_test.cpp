// Tests of the safetensors reader/writer. References are independent of the code under test: a file written by
// Python (tests/fixtures/safetensors_small.safetensors, values repeated literally below), byte-level checks of
// the format, hand-made corrupt files, and the GPT-2 golden's own loss recomputed here from its logits.
// The failed-write test lowers RLIMIT_FSIZE (with SIGXFSZ ignored) to make write() fail part-way.
#include "ds/ckpt/safetensors.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <utility>

#include "common/scratch_dir.h"
#include "ds/core/error.h"

namespace ds {
namespace {

std::string fixture(const std::string& name) { return std::string(DS_SOURCE_DIR) + "/tests/fixtures/" + name; }

class SafetensorsTest : public test::ScratchDirTest {
 protected:
  // A raw file: 8-byte length (given, or the header's size), header text, then the data bytes.
  static std::string raw(const std::string& header, const std::string& data, int64_t len = -1) {
    uint64_t n = len < 0 ? header.size() : static_cast<uint64_t>(len);
    std::string out(8, '\0');
    std::memcpy(out.data(), &n, 8);
    return out + header + data;
  }
  void expect_io_error(const std::string& bytes, const std::string& needle) {
    const std::string p = path("bad.safetensors");
    write_bytes(p, bytes);
    try {
      ckpt::SafetensorsFile::open(p);
      ADD_FAILURE() << "expected IoError containing '" << needle << "'";
    } catch (const IoError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("[safetensors]"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "message should name the file: " << e.what();
    }
  }
};

template <typename T>
std::vector<T> as(const ckpt::SafetensorsView& v) {
  std::vector<T> out(v.nbytes / sizeof(T));
  if (v.nbytes) std::memcpy(out.data(), v.data, v.nbytes);
  return out;
}

TEST_F(SafetensorsTest, RoundTripSeveralDtypesAndMetadata) {
  const std::vector<float> f32 = {1.5f, -0.0f, 3.0e-39f, INFINITY, -1e30f, 0.1f};
  const std::vector<uint16_t> bf16 = {0x3f80, 0xc000, 0x7fc0};
  const std::vector<uint16_t> f16 = {0x3c00, 0x0001, 0xfbff, 0x7c00};
  const std::vector<int32_t> i32 = {-7, 0, 2147483647};
  const std::vector<int64_t> i64 = {-(int64_t{1} << 40), 5};
  const std::vector<uint8_t> u8 = {0, 17, 255};
  const std::vector<double> f64 = {3.141592653589793};
  const std::vector<ckpt::SafetensorsEntry> entries = {
      {"u8", "U8", {3}, u8.data(), 3},  // 1-byte first: the writer must still align the rest
      {"w.f32", "F32", {2, 3}, f32.data(), 24},
      {"w.bf16", "BF16", {3}, bf16.data(), 6},
      {"w.f16", "F16", {2, 2}, f16.data(), 8},
      {"i32", "I32", {3}, i32.data(), 12},
      {"i64", "I64", {2, 1}, i64.data(), 16},
      {"scalar", "F64", {}, f64.data(), 8},
      {"empty", "F32", {0, 4}, nullptr, 0},
  };
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"step", "12"}, {"note", "q\"uote\n"}};
  const std::string p = path("rt.safetensors");
  ckpt::write_safetensors(p, entries, meta);

  ckpt::SafetensorsFile f = ckpt::SafetensorsFile::open(p);
  EXPECT_EQ(f.size(), entries.size());
  EXPECT_EQ(f.names(), (std::vector<std::string>{"empty", "i32", "i64", "scalar", "u8", "w.bf16", "w.f16", "w.f32"}));
  EXPECT_EQ(f.metadata(), meta);
  for (const ckpt::SafetensorsEntry& e : entries) {
    SCOPED_TRACE(e.name);
    ASSERT_TRUE(f.contains(e.name));
    const ckpt::SafetensorsView& v = f.get(e.name);
    EXPECT_EQ(v.dtype, e.dtype);
    EXPECT_EQ(v.shape, e.shape);
    ASSERT_EQ(v.nbytes, e.nbytes);
    if (e.nbytes) {
      EXPECT_EQ(std::memcmp(v.data, e.data, e.nbytes), 0);
    }
    // Written by us, so aligned to the element size.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data) % ckpt::safetensors_dtype_size(e.dtype), 0u);
  }
  EXPECT_EQ(f.get("scalar").numel(), 1);
  EXPECT_EQ(f.get("empty").numel(), 0);
  EXPECT_FALSE(f.contains("missing"));

  // F32 reads back bit-exact (signed zero, subnormal, inf); BF16/F16 widen exactly.
  std::vector<float> back = ckpt::read_safetensors_f32(f, "w.f32");
  ASSERT_EQ(back.size(), f32.size());
  for (size_t i = 0; i < f32.size(); ++i) EXPECT_EQ(std::bit_cast<uint32_t>(back[i]), std::bit_cast<uint32_t>(f32[i]));
  std::vector<float> b = ckpt::read_safetensors_f32(f, "w.bf16");
  EXPECT_EQ(b[0], 1.0f);
  EXPECT_EQ(b[1], -2.0f);
  EXPECT_TRUE(std::isnan(b[2]));
  EXPECT_EQ(ckpt::read_safetensors_f32(f, "w.f16"),
            (std::vector<float>{1.0f, std::ldexp(1.0f, -24), -65504.0f, INFINITY}));
  EXPECT_EQ(ckpt::read_safetensors_i32(f, "i32"), i32);
  EXPECT_THROW(ckpt::read_safetensors_i32(f, "i64"), IoError);  // -2^40 does not fit: refuse rather than wrap
}

TEST_F(SafetensorsTest, I64ToI32RefusesOverflow) {
  const std::vector<int64_t> ok = {-3, 2147483647};
  const std::vector<int64_t> big = {int64_t{1} << 40};
  ckpt::write_safetensors(path("i.safetensors"),
                          {{"ok", "I64", {2}, ok.data(), 16}, {"big", "I64", {1}, big.data(), 8}});
  ckpt::SafetensorsFile f = ckpt::SafetensorsFile::open(path("i.safetensors"));
  EXPECT_EQ(ckpt::read_safetensors_i32(f, "ok"), (std::vector<int32_t>{-3, 2147483647}));
  EXPECT_THROW(ckpt::read_safetensors_i32(f, "big"), IoError);
  EXPECT_THROW(ckpt::read_safetensors_f32(f, "ok"), IoError);
  EXPECT_THROW(ckpt::read_safetensors_i32(f, "nope"), IoError);
}

TEST_F(SafetensorsTest, HeaderIsCompactJsonPaddedWithSpacesToEightBytes) {
  const std::vector<float> x = {1, 2, 3};
  const std::string p = path("h.safetensors");
  ckpt::write_safetensors(p, {{"x", "F32", {3}, x.data(), 12}}, {{"k", "v"}});
  const std::string bytes = read_bytes(p);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  ASSERT_EQ(bytes.size(), 8 + n + 12);
  const std::string header = bytes.substr(8, n);
  const std::string expected = R"({"__metadata__":{"k":"v"},"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})";
  ASSERT_GE(header.size(), expected.size());
  EXPECT_EQ(header.substr(0, expected.size()), expected);
  EXPECT_EQ(header.substr(expected.size()), std::string(n - expected.size(), ' '));
  EXPECT_EQ(std::memcmp(bytes.data() + 8 + n, x.data(), 12), 0);
}

TEST_F(SafetensorsTest, NoTensorsNoMetadata) {
  const std::string p = path("empty.safetensors");
  ckpt::write_safetensors(p, {});
  ckpt::SafetensorsFile f = ckpt::SafetensorsFile::open(p);
  EXPECT_EQ(f.size(), 0u);
  EXPECT_TRUE(f.metadata().empty());
  EXPECT_EQ(read_bytes(p), raw("{}      ", ""));
}

TEST_F(SafetensorsTest, ReadsPythonFixture) {
  // Written by scripts/gen_fixtures.py in alphabetical order with no alignment: e_i64 and g_scalar are unaligned.
  ckpt::SafetensorsFile f = ckpt::SafetensorsFile::open(fixture("safetensors_small.safetensors"));
  EXPECT_EQ(f.names(), (std::vector<std::string>{"a_f32", "b_bf16", "c_f16", "d_i32", "e_i64", "f_u8", "g_scalar"}));
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"producer", "scripts/gen_fixtures.py"}}));

  const ckpt::SafetensorsView& a = f.get("a_f32");
  EXPECT_EQ(a.dtype, "F32");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  std::vector<float> av = ckpt::safetensors_to_f32(a);
  EXPECT_EQ(av, (std::vector<float>{1.0f, -2.5f, 3.25f, 0.1f, 1e30f, -0.0f}));
  EXPECT_TRUE(std::signbit(av[5]));

  EXPECT_EQ(f.get("b_bf16").shape, (std::vector<int64_t>{4}));
  EXPECT_EQ(ckpt::read_safetensors_f32(f, "b_bf16"), (std::vector<float>{1.0f, -2.0f, 0.5f, 3.140625f}));
  EXPECT_EQ(f.get("c_f16").shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(ckpt::read_safetensors_f32(f, "c_f16"), (std::vector<float>{1.0f, -0.5f, 65504.0f, std::ldexp(1.0f, -24)}));
  EXPECT_EQ(ckpt::read_safetensors_i32(f, "d_i32"), (std::vector<int32_t>{-1, 0, 2147483647}));
  EXPECT_EQ(f.get("e_i64").dtype, "I64");
  EXPECT_EQ(as<int64_t>(f.get("e_i64")), (std::vector<int64_t>{-(int64_t{1} << 40), 7}));
  EXPECT_EQ(as<uint8_t>(f.get("f_u8")), (std::vector<uint8_t>{0, 1, 2, 254, 255}));
  const ckpt::SafetensorsView& s = f.get("g_scalar");
  EXPECT_TRUE(s.shape.empty());
  EXPECT_EQ(s.numel(), 1);
  EXPECT_EQ(ckpt::safetensors_to_f32(s), (std::vector<float>{42.0f}));
}

TEST_F(SafetensorsTest, MissingTensorNamesFileAndClosestNames) {
  const std::vector<float> x = {1};
  const std::string p = path("m.safetensors");
  ckpt::write_safetensors(p, {{"transformer.h.0.ln_1.weight", "F32", {1}, x.data(), 4},
                        {"transformer.h.0.ln_2.weight", "F32", {1}, x.data(), 4},
                        {"transformer.wte.weight", "F32", {1}, x.data(), 4}});
  ckpt::SafetensorsFile f = ckpt::SafetensorsFile::open(p);
  try {
    f.get("transformer.h.0.ln_1.wieght");
    ADD_FAILURE() << "expected IoError";
  } catch (const IoError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(p), std::string::npos) << msg;
    EXPECT_NE(msg.find("'transformer.h.0.ln_1.wieght'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("closest: 'transformer.h.0.ln_1.weight'"), std::string::npos) << msg;
  }
}

TEST_F(SafetensorsTest, MoveKeepsMappingAlive) {
  const std::vector<int32_t> x = {4, 5, 6};
  ckpt::write_safetensors(path("mv.safetensors"), {{"x", "I32", {3}, x.data(), 12}});
  ckpt::SafetensorsFile a = ckpt::SafetensorsFile::open(path("mv.safetensors"));
  const ckpt::SafetensorsView* v = &a.get("x");
  ckpt::SafetensorsFile b = std::move(a);
  EXPECT_EQ(&b.get("x"), v);
  EXPECT_EQ(as<int32_t>(b.get("x")), x);
}

TEST_F(SafetensorsTest, OpenMissingFile) {
  try {
    ckpt::SafetensorsFile::open(path("nope.safetensors"));
    ADD_FAILURE() << "expected IoError";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("nope.safetensors"), std::string::npos) << e.what();
  }
}

TEST_F(SafetensorsTest, CorruptFilesThrowIoError) {
  const std::string ok_header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data8(8, '\x01');
  expect_io_error("", "too short");
  expect_io_error("\x05\x00\x00", "too short");
  expect_io_error(raw(ok_header, data8, 1000), "header length 1000 exceeds");
  expect_io_error(raw(ok_header, data8, int64_t{1} << 62), "exceeds");
  expect_io_error(raw(ok_header, data8).substr(0, 8 + ok_header.size() - 3), "exceeds");   // truncated in header
  expect_io_error(raw(ok_header, data8).substr(0, 8 + ok_header.size() + 5), "beyond");   // truncated in data
  expect_io_error(raw(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", data8), "not valid JSON");
  expect_io_error(raw("\xff\xfe garbage", data8), "not valid JSON");
  expect_io_error(raw("[1,2]", ""), "should be a JSON object");
  expect_io_error(raw(std::string(100000, '[') + std::string(100000, ']'), ""), "deeper than 8 levels");
  expect_io_error(raw(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,1e400]}})", data8), "out of range");
  expect_io_error(raw(R"({"x":{"dtype":"F31","shape":[2],"data_offsets":[0,8]}})", data8), "dtype \"F31\"");
  expect_io_error(raw(R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data8), "should occupy 12 bytes");
  expect_io_error(raw(R"({"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data8), "non-negative");
  expect_io_error(raw(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", data8), "beyond");
  expect_io_error(raw(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", data8), "begin after end");
  expect_io_error(raw(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", data8), "data_offsets");
  expect_io_error(raw(R"({"x":{"dtype":"F32","shape":[2]}})", data8), "no \"data_offsets\"");
  expect_io_error(raw(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("y":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", data8), "overlaps");
  expect_io_error(raw(R"({"x":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", data8), "gap");
  expect_io_error(raw(ok_header, data8 + "xx"), "trailing bytes");
  expect_io_error(raw(R"({"__metadata__":{"k":1},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", data8),
                  "should be a string");
  expect_io_error(raw(R"({"x":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", data8),
                  "overflowing");
  // And the untouched raw file is accepted, so the cases above fail for the reason named.
  write_bytes(path("good.safetensors"), raw(ok_header, data8));
  EXPECT_EQ(ckpt::SafetensorsFile::open(path("good.safetensors")).get("x").nbytes, 8u);
}

TEST_F(SafetensorsTest, WriteIntoMissingDirectoryThrows) {
  const std::vector<float> x = {1};
  const std::string p = path("no/such/dir/x.safetensors");
  EXPECT_THROW(ckpt::write_safetensors(p, {{"x", "F32", {1}, x.data(), 4}}), IoError);
  EXPECT_TRUE(dir_entries().empty());
}

TEST_F(SafetensorsTest, InvalidEntriesLeaveExistingFileIntact) {
  const std::vector<float> x = {1, 2};
  const std::string p = path("keep.safetensors");
  ckpt::write_safetensors(p, {{"x", "F32", {2}, x.data(), 8}}, {{"v", "1"}});
  const std::string before = read_bytes(p);
  const std::vector<std::vector<ckpt::SafetensorsEntry>> bad = {
      {{"x", "F33", {2}, x.data(), 8}},                             // unknown dtype
      {{"x", "F32", {3}, x.data(), 8}},                             // nbytes != numel * size
      {{"x", "F32", {-2}, x.data(), 8}},                            // negative dim
      {{"x", "F32", {2}, x.data(), 8}, {"x", "F32", {2}, x.data(), 8}},  // duplicate
      {{"__metadata__", "F32", {2}, x.data(), 8}},                  // reserved name
      {{"", "F32", {2}, x.data(), 8}},                              // empty name
      {{"x", "F32", {2}, nullptr, 8}},                              // null data
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_THROW(ckpt::write_safetensors(p, bad[i], {{"v", "2"}}), IoError);
    EXPECT_EQ(read_bytes(p), before);
    EXPECT_EQ(dir_entries(), (std::vector<std::string>{"keep.safetensors"}));
  }
  EXPECT_EQ(ckpt::SafetensorsFile::open(p).metadata().at("v"), "1");
}

TEST_F(SafetensorsTest, FailedWriteRemovesTempAndKeepsOldFile) {
  const std::vector<float> small = {1, 2};
  const std::string p = path("old.safetensors");
  ckpt::write_safetensors(p, {{"x", "F32", {2}, small.data(), 8}});
  const std::string before = read_bytes(p);

  // Make write() fail with EFBIG part-way through a 64 KiB tensor.
  const std::vector<float> big(16384, 3.0f);
  struct rlimit saved {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  struct rlimit low = saved;
  low.rlim_cur = 4096;
  auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &low), 0);
  bool threw = false;
  try {
    ckpt::write_safetensors(p, {{"x", "F32", {16384}, big.data(), big.size() * 4}});
  } catch (const IoError&) {
    threw = true;
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  ::signal(SIGXFSZ, old_handler);
  EXPECT_TRUE(threw);
  EXPECT_EQ(read_bytes(p), before);
  EXPECT_EQ(dir_entries(), (std::vector<std::string>{"old.safetensors"}));
}

TEST_F(SafetensorsTest, OverwriteReplacesFileAndLeavesNoTemp) {
  const std::vector<float> a = {1, 2}, b = {7, 8, 9};
  const std::string p = path("w.safetensors");
  ckpt::write_safetensors(p, {{"a", "F32", {2}, a.data(), 8}});
  ckpt::SafetensorsFile old = ckpt::SafetensorsFile::open(p);  // an open mapping survives the rename
  ckpt::write_safetensors(p, {{"b", "F32", {3}, b.data(), 12}});
  EXPECT_EQ(ckpt::safetensors_to_f32(old.get("a")), a);
  ckpt::SafetensorsFile f = ckpt::SafetensorsFile::open(p);
  EXPECT_FALSE(f.contains("a"));
  EXPECT_EQ(ckpt::read_safetensors_f32(f, "b"), b);
  EXPECT_EQ(dir_entries(), (std::vector<std::string>{"w.safetensors"}));
}

// The GPT-2 golden is consumed by the nn/optim tests; here we check it is well-formed and self-consistent.
TEST_F(SafetensorsTest, Gpt2GoldenFixtureIsConsistent) {
  ckpt::SafetensorsFile f = ckpt::SafetensorsFile::open(fixture("gpt2_tiny_golden.safetensors"));
  const auto& m = f.metadata();
  for (const char* k : {"n_layer", "n_head", "n_embd", "vocab_size", "block_size", "B", "T", "lr", "betas", "eps",
                        "weight_decay"}) {
    EXPECT_TRUE(m.count(k)) << k;
  }
  const int L = std::stoi(m.at("n_layer")), C = std::stoi(m.at("n_embd")), V = std::stoi(m.at("vocab_size"));
  const int Tmax = std::stoi(m.at("block_size")), B = std::stoi(m.at("B")), T = std::stoi(m.at("T"));
  EXPECT_EQ(L, 2);
  EXPECT_LT(T, Tmax);

  std::vector<std::pair<std::string, std::vector<int64_t>>> params = {{"transformer.wte.weight", {V, C}},
                                                                      {"transformer.wpe.weight", {Tmax, C}}};
  for (int i = 0; i < L; ++i) {
    const std::string h = "transformer.h." + std::to_string(i) + ".";
    params.push_back({h + "ln_1.weight", {C}});
    params.push_back({h + "ln_1.bias", {C}});
    params.push_back({h + "attn.c_attn.weight", {C, 3 * C}});
    params.push_back({h + "attn.c_attn.bias", {3 * C}});
    params.push_back({h + "attn.c_proj.weight", {C, C}});
    params.push_back({h + "attn.c_proj.bias", {C}});
    params.push_back({h + "ln_2.weight", {C}});
    params.push_back({h + "ln_2.bias", {C}});
    params.push_back({h + "mlp.c_fc.weight", {C, 4 * C}});
    params.push_back({h + "mlp.c_fc.bias", {4 * C}});
    params.push_back({h + "mlp.c_proj.weight", {4 * C, C}});
    params.push_back({h + "mlp.c_proj.bias", {C}});
  }
  params.push_back({"transformer.ln_f.weight", {C}});
  params.push_back({"transformer.ln_f.bias", {C}});
  for (const auto& [name, shape] : params) {
    for (const char* prefix : {"param.", "grad.", "adamw3."}) {
      SCOPED_TRACE(prefix + name);
      const ckpt::SafetensorsView& v = f.get(prefix + name);
      EXPECT_EQ(v.dtype, "F32");
      EXPECT_EQ(v.shape, shape);
    }
    EXPECT_NE(ckpt::read_safetensors_f32(f, "param." + name), ckpt::read_safetensors_f32(f, "adamw3." + name)) << name;
  }
  EXPECT_EQ(f.size(), 3 * params.size() + 2 + 1 + 1 + 3);  // + ids, targets, logits, loss, 3 step losses
  EXPECT_FALSE(f.contains("lm_head.weight"));

  // Mean cross-entropy recomputed from the stored logits and targets.
  EXPECT_EQ(f.get("logits").shape, (std::vector<int64_t>{B, T, V}));
  EXPECT_EQ(f.get("input_ids").shape, (std::vector<int64_t>{B, T}));
  const std::vector<float> logits = ckpt::read_safetensors_f32(f, "logits");
  const std::vector<int32_t> ids = ckpt::read_safetensors_i32(f, "input_ids");
  const std::vector<int32_t> targets = ckpt::read_safetensors_i32(f, "targets");
  for (int32_t t : ids) EXPECT_TRUE(t >= 0 && t < V);
  double loss = 0;
  for (int r = 0; r < B * T; ++r) {
    ASSERT_TRUE(targets[r] >= 0 && targets[r] < V);
    double mx = -INFINITY, z = 0;
    for (int v = 0; v < V; ++v) mx = std::max(mx, double(logits[r * V + v]));
    for (int v = 0; v < V; ++v) z += std::exp(double(logits[r * V + v]) - mx);
    loss += mx + std::log(z) - logits[r * V + targets[r]];
  }
  loss /= B * T;
  const float stored = ckpt::read_safetensors_f32(f, "loss").at(0);
  EXPECT_NEAR(loss, stored, 1e-5);
  EXPECT_EQ(ckpt::read_safetensors_f32(f, "loss_step0").at(0), stored);
  EXPECT_LT(ckpt::read_safetensors_f32(f, "loss_step2").at(0), stored);
}

}  // namespace
}  // namespace ds
