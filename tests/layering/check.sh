#!/usr/bin/env bash
# The layering is enforced by the build: a file compiled as part of nn that includes an engine header fails with
# "No such file" for that header, while the same file including an ops header (allowed) builds.
# Usage: check.sh BUILD_DIR
set -uo pipefail
build=$1
if ! out=$(cmake --build "$build" --target layering_probe_allowed 2>&1); then
  echo "the allowed include (nn -> ops) failed to build:"; echo "$out"; exit 1
fi
if out=$(cmake --build "$build" --target layering_probe_forbidden 2>&1); then
  echo "the forbidden include (nn -> engine) built; the layering is not enforced"; exit 1
fi
if ! grep -q "ds/engine/engine.h" <<<"$out" || ! grep -qi "no such file" <<<"$out"; then
  echo "the forbidden include failed for another reason than the missing header:"; echo "$out"; exit 1
fi
echo "layering: nn may include ops; nn including ds/engine/engine.h fails with: $(grep -i 'no such file' <<<"$out" | head -1)"
