#!/usr/bin/env bash
# Installs every Debian package deepspeed.cpp needs to build and test, then configures and builds it.
# Usage: scripts/setup.sh [--with-torch] [--cuda] [--werror]
#   --with-torch  also install python3-torch (only for regenerating fixtures and the PyTorch comparison benchmark)
#   --cuda        configure with -DDS_CUDA=ON (needs the CUDA toolkit in /usr/local/cuda)
#   --werror      configure with -DDS_WERROR=ON: any compiler warning in our code fails the build (CI uses it)
set -euo pipefail
cd "$(dirname "$0")/.."

with_torch=0
cuda=OFF
werror=OFF
for arg in "$@"; do
  case "$arg" in
    --with-torch) with_torch=1 ;;
    --cuda) cuda=ON ;;
    --werror) werror=ON ;;
    *) echo "setup.sh: unknown option '$arg' (known: --with-torch, --cuda, --werror)" >&2; exit 2 ;;
  esac
done

packages=(build-essential cmake ninja-build ccache lld pkg-config
          libopenblas-dev libopenblas0-openmp libpcre2-dev nlohmann-json3-dev libcli11-dev libfmt-dev
          libgtest-dev libgmock-dev libbenchmark-dev openmpi-bin libopenmpi-dev zlib1g-dev libcpp-httplib-dev libboost-dev
          liburing-dev  # io_uring: NVMe offload
          fio    # the reference disk bandwidth of dspeed bench offload
          libprotobuf-dev protobuf-compiler  # TensorBoard event files (the tensorboard monitor)
          librsvg2-bin  # rsvg-convert: tests/cli check that the loss.svg charts render
          curl   # curl: the HTTP checks of tests/cli/serve.sh
          nodejs # node: the official openai client test (tests/cli/openai_client)
          clang libomp-dev   # CI's second compiler (Debian 12: clang 14); libomp-dev is its OpenMP (libomp-14-dev)
          libclang-rt-dev)   # libFuzzer and the sanitizers' runtimes (the fuzz build, tests/fuzz)
[ "$with_torch" = 1 ] && packages+=(python3-torch python3-numpy)

sudo_cmd=()
[ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)

missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done

# apt may be held by another process (unattended upgrades, a parallel job): wait and retry.
apt_retry() {
  local tries=0
  until "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"; do
    tries=$((tries + 1))
    if [ "$tries" -ge 10 ]; then
      echo "setup.sh: apt-get $* failed $tries times; giving up" >&2
      return 1
    fi
    echo "setup.sh: apt-get busy or failed, retrying in 15 s ($tries/10)" >&2
    sleep 15
  done
}

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  apt_retry update -q
  apt_retry install -y -q --no-install-recommends "${missing[@]}"
fi

# npm comes with nodejs from some repositories and separately from Debian's.
if ! command -v npm > /dev/null; then
  apt_retry update -q
  apt_retry install -y -q --no-install-recommends npm
fi
# The openai client the CLI test drives, at the version package-lock.json pins.
npm ci --prefix tests/cli/openai_client --no-audit --no-fund --loglevel=error

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDS_CUDA="$cuda" -DDS_WERROR="$werror"
cmake --build build -j "$(nproc)"
echo "setup.sh: built build/bin/dspeed"
