#!/usr/bin/env bash
# End to end: `dspeed launch -n 2 -- dspeed train` with ZeRO stages 1-3 on a small corpus finishes, prints the
# per-rank report with model states at the formula (ratio 1.000 +- 5%), and bad multi-rank input fails cleanly.
# Usage: zero_train.sh PATH/TO/dspeed   (exit 77 = skipped: no mpirun)
set -u
dspeed="$1"
command -v mpirun > /dev/null || { echo "mpirun not found; skipping"; exit 77; }
source "$(dirname "$0")/lib.sh"
prepare_tokens 40

for stage in 1 2 3; do
  printf '{"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": %s}}' "$stage" > "$tmp/z$stage.json"
  out=$(timeout 120 "$dspeed" launch -n 2 -- "$dspeed" train --config "$tmp/z$stage.json" --data "$tmp/tokens" \
        --model gpt2-tiny --seq-len 16 --steps 4 --eval-interval 0 --eval-batches 1 -q --out "$tmp/run$stage" 2>&1)
  rc=$?
  if [ "$rc" -ne 0 ]; then fail "stage $stage: exit $rc: $(printf '%s' "$out" | tail -n 5)"; continue; fi
  if ! printf '%s' "$out" | grep -q "ZeRO stage $stage over 2 data-parallel rank(s)"; then fail "stage $stage: no report"; continue; fi
  # Both ranks' model-state ratios to the formula within 5%.
  ratios=$(printf '%s\n' "$out" | awk '/^ +[01] +[0-9.]+ +[0-9.]+/ { print $7 }')
  n=$(printf '%s\n' "$ratios" | grep -c .)
  bad=$(printf '%s\n' "$ratios" | awk '$1 < 0.95 || $1 > 1.05' | grep -c .)
  if [ "$n" -ne 2 ] || [ "$bad" -ne 0 ]; then fail "stage $stage: ratios '$ratios'"; else passed=$((passed + 1)); fi
done

# A global batch that the 2 ranks cannot split: one clear error, non-zero exit, no hang.
printf '{"train_batch_size": 3, "train_micro_batch_size_per_gpu": 1}' > "$tmp/odd.json"
start=$(date +%s)
out=$(timeout 60 "$dspeed" launch -n 2 -- "$dspeed" train --config "$tmp/odd.json" --data "$tmp/tokens" \
      --seq-len 16 --steps 2 -q --out "$tmp/odd" 2>&1)
rc=$?
if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ]; then
  fail "indivisible batch: exit $rc"
elif ! printf '%s' "$out" | grep -q "train_batch_size"; then
  fail "indivisible batch: message lacks train_batch_size: $out"
else
  passed=$((passed + 1))
fi
echo "indivisible batch failed in $(( $(date +%s) - start )) s"

finish
