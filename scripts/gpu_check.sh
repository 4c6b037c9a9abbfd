#!/usr/bin/env bash
# The checks that need the GPU machine (Ubuntu 24.04, GCC 13, CUDA 13, one NVIDIA GPU; machine-notes.md), in one
# run: the CUDA build with GCC 13 and warnings as errors, the GPU tests (OpsCuda.* against the CPU ops,
# DeviceForward.* against the CPU engine), single-stream decode against PyTorch on the same GPU, then the unit tests.
#
# That machine lacks the -dev packages of PCRE2, cpp-httplib, brotli and OpenSSL. Fetch Debian's here first:
#   bash scripts/gpu_check.sh --fetch      (writes build-gpu-debs/, about 7 MB; build*/ is not tracked)
# then run this script there from the repository root, carrying build-gpu-debs:
#   bash scripts/gpu_check.sh              (results and logs under ${OUT:-build-gpu/out})
set -euo pipefail
cd "$(dirname "$0")/.."

debs=build-gpu-debs
packages=(libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libcpp-httplib-dev libcpp-httplib0.11
          libbrotli-dev libbrotli1 libssl-dev libssl3)
if [ "${1:-}" = --fetch ]; then
  mkdir -p "$debs"
  (cd "$debs" && apt-get download "${packages[@]}")
  ls -la "$debs"
  exit 0
fi

out=${OUT:-build-gpu/out}
mkdir -p "$out"
nvidia-smi | tee "$out/nvidia-smi.txt"
g++ --version | head -1 | tee "$out/compiler.txt"

# The carried packages, unpacked beside the build with their pkg-config files pointing at where they now lie. The
# executables find their libraries through the build's rpath; nothing else sees the unpacked ones.
compgen -G "$debs/*.deb" > /dev/null || {
  echo "gpu_check: no packages in $debs/; run 'bash scripts/gpu_check.sh --fetch' on a Debian machine and carry $debs"
  exit 1
}
deps=$PWD/build-gpu/deps
rm -rf "$deps" && mkdir -p "$deps"
for d in "$debs"/*.deb; do dpkg -x "$d" "$deps"; done
sed -i "s|^prefix=/usr\$|prefix=$deps/usr|" "$deps"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc
export PKG_CONFIG_PATH=$deps/usr/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}

generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
echo "== CUDA build, GCC 13, warnings as errors"
cmake -S . -B build-gpu/build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DDS_CUDA=ON -DDS_WERROR=ON \
      -DDS_BUILD_TESTS=ON -DDS_BUILD_BENCH=OFF > "$out/configure.log" 2>&1 ||
  { tail -n 40 "$out/configure.log"; exit 1; }
cmake --build build-gpu/build -j "$(nproc)" > "$out/build.log" 2>&1 ||
  { grep -m 20 -E "error:|warning:" "$out/build.log"; exit 1; }
echo "built with no warnings"

echo "== GPU tests"
rc=0
./build-gpu/build/tests/ops_test --gtest_filter='OpsCuda.*' 2>&1 | tee "$out/ops_cuda.txt" || rc=1
./build-gpu/build/tests/inference_test --gtest_filter='DeviceForward.*:WeightSource*' 2>&1 |
  tee "$out/device_forward.txt" || rc=1

echo "== decode on the GPU against PyTorch on the same GPU (GPT-2 124M, one training step for its weights)"
dspeed=./build-gpu/build/bin/dspeed
"$dspeed" train --model gpt2 --steps 1 --seq-len 16 --out build-gpu/m --save build-gpu/m/ckpt \
  > "$out/train.log" 2>&1 || rc=1
"$dspeed" bench decode --model build-gpu/m/ckpt --device cuda --python python3 --repeats 3 2>&1 |
  tee "$out/decode.txt" || rc=1

echo "== unit tests"
ctest --test-dir build-gpu/build -L unit -j "$(nproc)" > "$out/ctest.log" 2>&1 || rc=1
tail -n 12 "$out/ctest.log"
exit "$rc"
