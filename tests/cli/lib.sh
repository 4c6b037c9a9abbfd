# Shared by the CLI test scripts (sourced after `dspeed="$1"`): a temporary directory removed on exit, pass/fail
# counters, a small prepared corpus, the one-clear-error-line check, and the closing line.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
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
