// A whole .safetensors file (8-byte header length, JSON header, data): opened, then every tensor read as f32
// where its dtype allows, as `dspeed serve --model F.safetensors` would.
#include "ds/ckpt/safetensors.h"
#include "fuzz/fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = ds::fuzz::scratch_dir() / "input.safetensors";
  ds::fuzz::write_file(path, data, size);
  return ds::fuzz::run_input([&] {
    const ds::ckpt::SafetensorsFile f = ds::ckpt::SafetensorsFile::open(path.string());
    for (const std::string& name : f.names()) {
      const ds::ckpt::SafetensorsView& v = f.get(name);
      if (v.dtype == "F32" || v.dtype == "BF16" || v.dtype == "F16") ds::ckpt::safetensors_to_f32(v);
    }
  });
}
