# Shared by the CLI test scripts (sourced after `dspeed="$1"`): a temporary directory removed on exit, pass/fail
# counters, a small prepared corpus, a tiny trained model, dspeed serve started and stopped, the one-clear-error-line
# check, and the closing line.
tmp=$(mktemp -d)
servers=()  # ids of the servers started here, killed if the script ends early
trap 'for p in ${servers[@]+"${servers[@]}"}; do kill -KILL "$p" 2> /dev/null; done; rm -rf "$tmp"' EXIT
failures=0
passed=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { passed=$((passed + 1)); }

# prepare_tokens LINES: six documents of LINES lines in $tmp/corpus, prepared into $tmp/tokens (doc6 validates).
prepare_tokens() {
  mkdir -p "$tmp/corpus"
  local i j
  for i in 1 2 3 4 5 6; do
    for j in $(seq 1 "$1"); do
      printf 'Document %s line %s: the union is strong, and the people are many.\n' "$i" "$j"
    done > "$tmp/corpus/doc$i.txt"
  done
  "$dspeed" data prepare --input "$tmp/corpus" --out "$tmp/tokens" --val-pattern 'doc6' > /dev/null 2>&1 || {
    echo "FAIL: data prepare"; exit 1; }
}

# train_tiny: gpt2-tiny trained for 3 steps on prepare_tokens 20, saved to $tmp/ck; exits the script on failure.
train_tiny() {
  prepare_tokens 20
  printf '{"train_micro_batch_size_per_gpu": 2}' > "$tmp/c.json"
  timeout 120 "$dspeed" train --config "$tmp/c.json" --data "$tmp/tokens" --model gpt2-tiny --seq-len 16 --steps 3 \
    --eval-interval 0 --eval-batches 1 -q --save "$tmp/ck" --out "$tmp/run" > "$tmp/train.log" 2>&1 || {
    echo "FAIL: train: $(tail -n 5 "$tmp/train.log")"; exit 1; }
}

# start_server LOG ARGS...: dspeed serve ARGS (--model among them) on a free port (--port 0, read back from its
# banner); sets pid and port. Returns non-zero if no banner came within 30 s.
start_server() {
  local log="$1"
  shift
  "$dspeed" serve --port 0 "$@" > "$tmp/$log.out" 2> "$tmp/$log.err" &
  pid=$!
  servers+=("$pid")
  port=""
  local deadline=$((SECONDS + 30))
  while [ -z "$port" ] && [ "$SECONDS" -lt "$deadline" ] && kill -0 "$pid" 2> /dev/null; do
    port=$(sed -n 's|^serving .* at http://127\.0\.0\.1:\([0-9][0-9]*\)/v1 .*|\1|p' "$tmp/$log.out" 2> /dev/null)
    [ -n "$port" ] || sleep 0.1
  done
  [ -n "$port" ]
}

# stop_server PID: SIGTERM, then the exit status must be 0 within 5 s; prints the milliseconds it took.
stop_server() {
  local p="$1" t0 rc
  t0=$(date +%s%N)
  kill -TERM "$p"
  for _ in $(seq 1 50); do kill -0 "$p" 2> /dev/null || break; sleep 0.1; done
  if kill -0 "$p" 2> /dev/null; then
    kill -KILL "$p"; wait "$p" 2> /dev/null
    fail "the server was still running 5 s after SIGTERM"; return
  fi
  wait "$p"
  rc=$?
  echo "server stopped $(( ($(date +%s%N) - t0) / 1000000 )) ms after SIGTERM"
  if [ "$rc" -ne 0 ]; then fail "exit status $rc after SIGTERM"; else ok; fi
}

# expect_error NAME WORDS COMMAND...: COMMAND exits non-zero with exactly one line on stderr, which starts with
# "error: " and contains WORDS (a grep pattern, case-insensitive).
expect_error() {
  local name="$1" want="$2"
  shift 2
  local err rc
  err=$("$@" 2>&1 >/dev/null)
  rc=$?
  local lines
  lines=$(printf '%s\n' "$err" | grep -c .)
  if [ "$rc" -eq 0 ]; then
    echo "FAIL: $name: exit status 0"; failures=$((failures + 1)); return
  fi
  if ! printf '%s' "$err" | grep -q '^error: '; then
    echo "FAIL: $name: no 'error:' line in: $err"; failures=$((failures + 1)); return
  fi
  if ! printf '%s' "$err" | grep -qi -- "$want"; then
    echo "FAIL: $name: message lacks '$want': $err"; failures=$((failures + 1)); return
  fi
  if [ "$lines" -ne 1 ]; then
    echo "FAIL: $name: expected one line on stderr, got $lines: $err"; failures=$((failures + 1)); return
  fi
  passed=$((passed + 1))
}

finish() {
  echo "$passed passed, $failures failed"
  [ "$failures" -eq 0 ]
}
