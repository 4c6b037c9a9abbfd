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
pid=""
trap '[ -n "$pid" ] && kill -KILL "$pid" 2> /dev/null; rm -rf "$tmp"' EXIT

prepare_tokens 20
printf '{"train_micro_batch_size_per_gpu": 2}' > "$tmp/c.json"
timeout 120 "$dspeed" train --config "$tmp/c.json" --data "$tmp/tokens" --model gpt2-tiny --seq-len 16 --steps 3 \
  --eval-interval 0 --eval-batches 1 -q --save "$tmp/ck" --out "$tmp/run" > "$tmp/train.log" 2>&1 || {
  echo "FAIL: train: $(tail -n 5 "$tmp/train.log")"; exit 1; }

"$dspeed" serve --model "$tmp/ck" --served-model-name tiny --port 0 > "$tmp/serve.out" 2> "$tmp/serve.err" &
pid=$!
port=""
for _ in $(seq 1 300); do
  port=$(sed -n 's|^serving .* at http://127\.0\.0\.1:\([0-9][0-9]*\)/v1 .*|\1|p' "$tmp/serve.out" 2> /dev/null)
  [ -n "$port" ] && break
  kill -0 "$pid" 2> /dev/null || break
  sleep 0.1
done
[ -n "$port" ] || { echo "FAIL: dspeed serve gave no banner: $(cat "$tmp/serve.err")"; exit 1; }

if timeout 120 node "$client_dir/check.mjs" "http://127.0.0.1:$port/v1" tiny > "$tmp/node.out" 2>&1; then ok
else fail "$(tail -n 20 "$tmp/node.out")"; fi
cat "$tmp/node.out"
kill -TERM "$pid"
wait "$pid" || fail "dspeed serve exited with status $? after SIGTERM"
pid=""
finish
