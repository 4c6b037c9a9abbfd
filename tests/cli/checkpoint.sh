#!/usr/bin/env bash
# End to end, through real process restarts: `dspeed train --save` then `--load` continues exactly as one run
# (every metrics row of the resumed steps identical: single process at stage 0 in fp32 and at stage 1 in bf16,
# and under mpirun -np 2 at stage 3); a process killed while saving (DSPEED_TEST_KILL_DURING_SAVE) leaves the previous checkpoint and
# `latest` intact, including when it was re-saving an existing tag; `dspeed ckpt inspect` verifies; `dspeed ckpt
# consolidate` + `train --init-from` gives the checkpoint's weights; a corrupted shard is refused by name.
# Usage: checkpoint.sh PATH/TO/dspeed
set -u
dspeed="$1"
source "$(dirname "$0")/lib.sh"
prepare_tokens 60
common=(--data "$tmp/tokens" --model gpt2-tiny --seq-len 16 --eval-interval 0 --eval-batches 1 -q)
printf '{"train_micro_batch_size_per_gpu": 2, "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 12, "warmup_num_steps": 3}}}' > "$tmp/c.json"

# The training rows (step, loss, lr, grad_norm) of steps FROM..TO in a metrics file.
rows() { awk -F, -v a="$2" -v b="$3" 'NR > 1 && $1 >= a && $1 <= b && $3 == "" { print $1, $2, $4, $5 }' "$1"; }

# 1. 12 steps straight = 6 steps, save, a new process loads, 6 more: the same rows, and the same final parameters
#    (both runs save at the end; their consolidated files are compared byte for byte).
timeout 120 "$dspeed" train --config "$tmp/c.json" "${common[@]}" --steps 12 --out "$tmp/straight" \
  --save "$tmp/end_straight" > /dev/null 2>&1 || fail "straight run"
timeout 120 "$dspeed" train --config "$tmp/c.json" "${common[@]}" --steps 6 --save "$tmp/ck" --save-interval 3 \
  --out "$tmp/first" > /dev/null 2>&1 || fail "first half"
out=$(timeout 120 "$dspeed" train --config "$tmp/c.json" "${common[@]}" --steps 12 --load "$tmp/ck" --out "$tmp/second" \
      --save "$tmp/end_resumed" 2>&1)
[ $? -eq 0 ] || fail "resume: $out"
"$dspeed" ckpt consolidate "$tmp/end_straight" "$tmp/straight.safetensors" > /dev/null 2>&1 || fail "consolidate straight"
"$dspeed" ckpt consolidate "$tmp/end_resumed" "$tmp/resumed.safetensors" > /dev/null 2>&1 || fail "consolidate resumed"
if cmp -s "$tmp/straight.safetensors" "$tmp/resumed.safetensors"; then ok; else fail "final parameters differ"; fi
if [ "$(cat "$tmp/ck/latest" 2>/dev/null)" != "global_step6" ]; then fail "latest is '$(cat "$tmp/ck/latest")'"
elif [ -z "$(rows "$tmp/straight/metrics.csv" 7 12)" ]; then fail "no rows in the straight run"
elif [ "$(rows "$tmp/straight/metrics.csv" 7 12)" != "$(rows "$tmp/second/metrics.csv" 7 12)" ]; then
  fail "resumed rows differ:"; diff <(rows "$tmp/straight/metrics.csv" 7 12) <(rows "$tmp/second/metrics.csv" 7 12)
else ok; fi

# 1b. The same in bf16 at stage 1 (fp32 master weights, bf16 parameters and gradients).
printf '{"train_micro_batch_size_per_gpu": 2, "bf16": {"enabled": true}, "zero_optimization": {"stage": 1}, "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 12, "warmup_num_steps": 3}}}' > "$tmp/b.json"
timeout 120 "$dspeed" train --config "$tmp/b.json" "${common[@]}" --steps 12 --out "$tmp/bs" > /dev/null 2>&1 || fail "bf16 straight"
timeout 120 "$dspeed" train --config "$tmp/b.json" "${common[@]}" --steps 6 --save "$tmp/bck" --out "$tmp/b1" > /dev/null 2>&1 ||
  fail "bf16 first half"
timeout 120 "$dspeed" train --config "$tmp/b.json" "${common[@]}" --steps 12 --load "$tmp/bck" --out "$tmp/b2" > /dev/null 2>&1 ||
  fail "bf16 resume"
if [ -z "$(rows "$tmp/bs/metrics.csv" 7 12)" ] || [ "$(rows "$tmp/bs/metrics.csv" 7 12)" != "$(rows "$tmp/b2/metrics.csv" 7 12)" ]; then
  fail "bf16 resumed rows differ"; diff <(rows "$tmp/bs/metrics.csv" 7 12) <(rows "$tmp/b2/metrics.csv" 7 12)
else ok; fi

# 2. Killed while saving a new tag (step 9, after the shards, before the manifest): step 6 stays the latest and
#    loads; killed while re-saving the existing tag global_step6 (from step 3): it stays complete.
DSPEED_TEST_KILL_DURING_SAVE=1 timeout 120 "$dspeed" train --config "$tmp/c.json" "${common[@]}" --steps 12 \
  --load "$tmp/ck" --save "$tmp/ck" --save-interval 3 --out "$tmp/killed" > /dev/null 2>&1
rc=$?
if [ "$rc" -ne 137 ]; then fail "kill during save: exit $rc (expected 137, SIGKILL)"
elif [ "$(cat "$tmp/ck/latest")" != "global_step6" ]; then fail "after the kill latest is '$(cat "$tmp/ck/latest")'"
elif [ -e "$tmp/ck/global_step9" ]; then fail "a half-written global_step9 was published"
elif ! "$dspeed" ckpt inspect "$tmp/ck" > "$tmp/inspect.txt" 2>&1; then fail "inspect after the kill: $(cat "$tmp/inspect.txt")"
else ok; fi
DSPEED_TEST_KILL_DURING_SAVE=1 timeout 120 "$dspeed" train --config "$tmp/c.json" "${common[@]}" --steps 12 \
  --load "$tmp/ck" --load-tag global_step3 --save "$tmp/ck" --save-interval 3 --out "$tmp/killed2" > /dev/null 2>&1
rc=$?
if [ "$rc" -ne 137 ]; then fail "kill while re-saving: exit $rc"
elif ! "$dspeed" ckpt inspect "$tmp/ck" --tag global_step6 > /dev/null 2>&1; then fail "global_step6 damaged by the kill"
else
  out=$(timeout 120 "$dspeed" train --config "$tmp/c.json" "${common[@]}" --steps 12 --load "$tmp/ck" --out "$tmp/third" 2>&1)
  if [ "$(rows "$tmp/straight/metrics.csv" 7 12)" != "$(rows "$tmp/third/metrics.csv" 7 12)" ]; then
    fail "resuming after the kills differs: $out"
  else ok; fi
fi

# 3. inspect names the layout; consolidate + --init-from starts from the same weights as --load.
if ! grep -q "ZeRO stage 0, 1 data-parallel x 1 tensor-parallel x 1 pipeline" "$tmp/inspect.txt" || ! grep -q "step 6 (12 samples)" "$tmp/inspect.txt"; then
  fail "inspect output: $(head -5 "$tmp/inspect.txt")"
else ok; fi
"$dspeed" ckpt consolidate "$tmp/ck" "$tmp/model.safetensors" > /dev/null 2>&1 || fail "consolidate"
a=$(timeout 120 "$dspeed" train --config "$tmp/c.json" --data "$tmp/tokens" --model gpt2-tiny --seq-len 16 --steps 12 \
    --load "$tmp/ck" --eval-batches 1 --out "$tmp/l" 2>&1 | grep "initial validation loss")
b=$(timeout 120 "$dspeed" train --config "$tmp/c.json" --data "$tmp/tokens" --model gpt2-tiny --seq-len 16 --steps 1 \
    --init-from "$tmp/model.safetensors" --eval-batches 1 --out "$tmp/i" 2>&1 | grep "initial validation loss")
if [ -z "$a" ] || [ "$a" != "$b" ]; then fail "init-from: '$b' vs load: '$a'"; else ok; fi

# 4. A corrupted shard: one error line naming the file, exit 1.
printf 'x' | dd of="$tmp/ck/global_step6/rank_00000.safetensors" bs=1 seek=3000 conv=notrunc 2> /dev/null
out=$(timeout 60 "$dspeed" train --config "$tmp/c.json" "${common[@]}" --steps 12 --load "$tmp/ck" --out "$tmp/bad" 2>&1)
rc=$?
if [ "$rc" -ne 1 ] || ! printf '%s' "$out" | grep -q "rank_00000.safetensors.*CRC-32"; then fail "corrupt shard: exit $rc: $out"
else ok; fi

# 5. Under mpirun -np 2 at stage 3: the same exact resume across processes.
if command -v mpirun > /dev/null; then
  printf '{"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}, "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 6, "warmup_num_steps": 2}}}' > "$tmp/z3.json"
  launch=(timeout 120 "$dspeed" launch -n 2 -- "$dspeed" train --config "$tmp/z3.json" "${common[@]}")
  "${launch[@]}" --steps 6 --out "$tmp/z3a" > /dev/null 2>&1 || fail "stage 3 straight"
  "${launch[@]}" --steps 3 --save "$tmp/z3ck" --out "$tmp/z3b" > /dev/null 2>&1 || fail "stage 3 first half"
  "${launch[@]}" --steps 6 --load "$tmp/z3ck" --out "$tmp/z3c" > /dev/null 2>&1 || fail "stage 3 resume"
  if [ -z "$(rows "$tmp/z3a/metrics.csv" 4 6)" ] || [ "$(rows "$tmp/z3a/metrics.csv" 4 6)" != "$(rows "$tmp/z3c/metrics.csv" 4 6)" ]; then
    fail "stage 3 resume rows differ"; diff <(rows "$tmp/z3a/metrics.csv" 4 6) <(rows "$tmp/z3c/metrics.csv" 4 6)
  elif ! "$dspeed" ckpt inspect "$tmp/z3ck" 2>&1 | grep -q "ZeRO stage 3, 2 data-parallel x 1 tensor-parallel"; then fail "stage 3 inspect"
  else ok; fi
else
  echo "mpirun not found; the stage-3 part is skipped"
fi

finish
