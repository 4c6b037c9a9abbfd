#!/usr/bin/env bash
# The official openai client from npm (tests/cli/openai_client, installed by scripts/setup.sh) against `dspeed
# serve` on a freshly trained gpt2-tiny: models, chat (whole, streamed, logprobs), completions (logprobs,
# streamed, echo scoring), and the errors it maps to its own exception classes. Skipped (77) without node or the
# installed client.
# Usage: openai_client.sh PATH/TO/dspeed
set -u
dspeed="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
source "$(dirname "$0")/lib.sh"
client_dir="$(cd "$(dirname "$0")" && pwd)/openai_client"
cd "$(dirname "$0")/../.." || exit 1
if ! command -v node > /dev/null || [ ! -d "$client_dir/node_modules/openai" ]; then
  echo "node or the openai client is missing (scripts/setup.sh installs them); skipped"
  exit 77
fi
train_tiny
start_server serve --model "$tmp/ck" --served-model-name tiny ||
  { echo "FAIL: dspeed serve gave no banner: $(cat "$tmp/serve.err")"; exit 1; }

if timeout 120 node "$client_dir/check.mjs" "http://127.0.0.1:$port/v1" tiny > "$tmp/node.out" 2>&1; then ok
else fail "$(tail -n 20 "$tmp/node.out")"; fi
cat "$tmp/node.out"
stop_server "$pid"
finish
