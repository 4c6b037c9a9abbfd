# Shared by the CLI test scripts (sourced after `dspeed="$1"`): a temporary directory removed on exit, pass/fail
# counters, a small prepared corpus, and the closing line.
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

finish() {
  echo "$passed passed, $failures failed"
  [ "$failures" -eq 0 ]
}
