// A checkpoint's manifest.json, read as `dspeed ckpt inspect`, `serve` and `train --init-from` read it: the
// manifest is parsed and checked, then its layout and shard list are checked against the files (none exist here,
// so a manifest that passes every check ends with the missing-shard error).
#include "ds/ckpt/checkpoint_format.h"
#include "fuzz/fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto tag_dir = ds::fuzz::scratch_dir() / "ckpt" / "tag";
  std::filesystem::create_directories(tag_dir);
  ds::fuzz::write_file(tag_dir / "manifest.json", data, size);
  return ds::fuzz::run_input(
      [&] { ds::ckpt::CheckpointReader reader((ds::fuzz::scratch_dir() / "ckpt").string(), "tag", false); });
}
