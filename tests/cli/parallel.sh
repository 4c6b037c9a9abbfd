#!/usr/bin/env bash
# End to end, 3D parallelism through `dspeed launch`: a (pp 2, tp 2) job with the ZB-H1 schedule trains, prints the
# per-rank traffic beside the formulas and saves a checkpoint that resumes at one rank on the same curve as the
# 4-rank run continued; `dspeed generate --tensor-parallel` over 2 ranks prints what one rank prints; layouts the
# world or DeepSpeed refuse are one clear error each. An MoE model trains with its experts over 2 ranks, its
# checkpoint resumes with them all on each rank on the same curve, evaluates and generates.
# Usage: parallel.sh PATH/TO/dspeed   (exit 77 = skipped: no mpirun)
set -u
dspeed="$1"
command -v mpirun > /dev/null || { echo "mpirun not found; skipping"; exit 77; }
source "$(dirname "$0")/lib.sh"
prepare_tokens 40
# The per-step rows (the run's final summary row repeats the last step: head keeps the first ones).
rows() { awk -F, -v a="$2" -v b="$3" 'NR > 1 && $1 >= a && $1 <= b { print $1 "," $2 }' "$1"; }

printf '{"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 4, "pipeline": {"stages": 2, "schedule": "zb-h1"}, "tensor_parallel": {"autotp_size": 2}}' > "$tmp/pp.json"
common=(--data "$tmp/tokens" --model gpt2-tiny --seq-len 16 --eval-interval 0 --eval-batches 1 -q)
out=$(timeout 180 "$dspeed" launch -n 4 -- "$dspeed" train --config "$tmp/pp.json" "${common[@]}" --steps 6 \
      --out "$tmp/a" 2>&1)
rc=$?
if [ "$rc" -ne 0 ]; then fail "pp 2 tp 2: exit $rc: $(printf '%s' "$out" | tail -n 5)"
elif ! printf '%s' "$out" | grep -q "model parallelism (pp 2 × tp 2 × dp 1)"; then fail "no model-parallel report: $out"
else
  # Each rank's tensor-parallel and pipeline traffic equal their formulas (columns 2 = 3 and 4 = 5).
  bad=$(printf '%s\n' "$out" | awk '/model parallelism/ { on = 1; next } on && /^ +[0-3] +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+$/ {
          n++; if ($2 != $3 || $4 != $5) b++ } END { print (n == 4 ? b + 0 : "rows " n) }')
  if [ "$bad" != "0" ]; then fail "traffic beside the formulas: $bad"; else ok; fi
fi

# Save at (pp 2, tp 2) after 3 steps; resume at one rank; steps 4-6 equal the uninterrupted 4-rank run's.
timeout 180 "$dspeed" launch -n 4 -- "$dspeed" train --config "$tmp/pp.json" "${common[@]}" --steps 3 \
  --save "$tmp/ck" --out "$tmp/b" > "$tmp/b.log" 2>&1 || fail "save at (2,2,1): $(tail -n 5 "$tmp/b.log")"
printf '{"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 4}' > "$tmp/one.json"
timeout 180 "$dspeed" train --config "$tmp/one.json" "${common[@]}" --steps 6 --load "$tmp/ck" --out "$tmp/c" \
  > "$tmp/c.log" 2>&1 || fail "resume at one rank: $(tail -n 5 "$tmp/c.log")"
want=$(rows "$tmp/a/metrics.csv" 4 6 | head -n 3 | cut -c1-9)
got=$(rows "$tmp/c/metrics.csv" 4 6 | head -n 3 | cut -c1-9)
if [ -z "$want" ] || [ "$want" != "$got" ]; then fail "resumed losses differ: want '$want' got '$got'"; else ok; fi

# Tensor-parallel generation over 2 ranks prints what one rank prints.
one=$(timeout 60 "$dspeed" generate -m "$tmp/ck" --prompt-ids 464,3290,286 --max-tokens 16 --tokenizer "" 2>/dev/null)
two=$(timeout 60 "$dspeed" launch -n 2 -- "$dspeed" generate --tensor-parallel -m "$tmp/ck" --prompt-ids 464,3290,286 \
      --max-tokens 16 --tokenizer "" 2>/dev/null)
if [ -z "$one" ] || [ "$one" != "$two" ]; then fail "generate --tensor-parallel: '$two' vs '$one'"; else ok; fi

# Refused layouts: one clear error each, non-zero exit, no hang.
expect_refusal() {  # NAME FRAGMENT CONFIG-JSON RANKS
  printf '%s' "$3" > "$tmp/bad.json"
  local o
  o=$(timeout 60 "$dspeed" launch -n "$4" -- "$dspeed" train --config "$tmp/bad.json" "${common[@]}" --steps 2 \
      --out "$tmp/bad" 2>&1)
  local r=$?
  if [ "$r" -eq 0 ] || [ "$r" -eq 124 ]; then fail "$1: exit $r"
  elif ! printf '%s' "$o" | grep -q "$2"; then fail "$1: no '$2' in: $(printf '%s' "$o" | tail -n 3)"
  else ok; fi
}
expect_refusal "world not a multiple" "cannot be split into 1 pipeline stage(s) x 3 tensor-parallel" \
  '{"train_micro_batch_size_per_gpu": 1, "tensor_parallel": {"autotp_size": 3}}' 2
expect_refusal "ZeRO-2 with a pipeline" "ZeRO-2 and ZeRO-3 are incompatible with pipeline parallelism" \
  '{"train_micro_batch_size_per_gpu": 1, "pipeline": {"stages": 2}, "zero_optimization": {"stage": 2}}' 2

# MoE: top-2 of 8 experts, dropless (examples/model_gpt2_tiny_mixtral.json): ep 2 over dp 2, saved after 3 steps,
# resumed at ep 1 (every rank holds every expert): steps 4-6 equal the uninterrupted ep-2 run's.
moe_model="$(dirname "$0")/../../examples/model_gpt2_tiny_mixtral.json"
printf '{"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 2, "zero_optimization": {"stage": 2}}' \
  > "$tmp/moe.json"
moe_args=(--data "$tmp/tokens" --model "$moe_model" --seq-len 16 --eval-interval 0 --eval-batches 1 -q)
moe=(--config "$tmp/moe.json" "${moe_args[@]}")
out=$(timeout 180 "$dspeed" launch -n 2 -- "$dspeed" train "${moe[@]}" --expert-parallel-size 2 --steps 6 \
      --out "$tmp/m1" 2>&1)
if [ $? -ne 0 ]; then fail "MoE at ep 2: $(printf '%s' "$out" | tail -n 5)"
elif ! head -n 1 "$tmp/m1/metrics.csv" | grep -q "moe_dropped_fraction"; then fail "no MoE columns in metrics.csv"
elif ! printf '%s' "$out" | grep -q "experts (Ψ_e per rank, ep 2)"; then fail "no experts in the ZeRO report"
else ok; fi
timeout 180 "$dspeed" launch -n 2 -- "$dspeed" train "${moe[@]}" --expert-parallel-size 2 --steps 3 \
  --save "$tmp/mck" --out "$tmp/m2" > "$tmp/m2.log" 2>&1 || fail "MoE save: $(tail -n 5 "$tmp/m2.log")"
timeout 180 "$dspeed" launch -n 2 -- "$dspeed" train "${moe[@]}" --steps 6 --load "$tmp/mck" --out "$tmp/m3" \
  > "$tmp/m3.log" 2>&1 || fail "MoE resume at ep 1: $(tail -n 5 "$tmp/m3.log")"
want=$(rows "$tmp/m1/metrics.csv" 4 6 | head -n 3 | cut -c1-9)
got=$(rows "$tmp/m3/metrics.csv" 4 6 | head -n 3 | cut -c1-9)
if [ -z "$want" ] || [ "$want" != "$got" ]; then fail "MoE resumed losses differ: want '$want' got '$got'"; else ok; fi
if ! timeout 60 "$dspeed" eval --model "$tmp/mck" --data "$tmp/tokens" --seq-len 16 2>&1 | grep -q "validation loss"; then
  fail "eval of an MoE checkpoint"; else ok; fi
gen=$(timeout 60 "$dspeed" generate -m "$tmp/mck" --prompt-ids 464,3290,286 --max-tokens 8 --tokenizer "" 2>/dev/null)
if [ -z "$gen" ]; then fail "generate from an MoE checkpoint printed nothing"; else ok; fi
expect_moe_refusal() {  # NAME FRAGMENT RANKS CONFIG EXTRA-ARGS...
  local name="$1" fragment="$2" ranks="$3" config="$4"
  shift 4
  local o
  o=$(timeout 60 "$dspeed" launch -n "$ranks" -- "$dspeed" train --config "$config" "${moe_args[@]}" --steps 2 \
      --out "$tmp/bad" "$@" 2>&1)
  local r=$?
  if [ "$r" -eq 0 ] || [ "$r" -eq 124 ]; then fail "$name: exit $r"
  elif ! printf '%s' "$o" | grep -q "$fragment"; then fail "$name: no '$fragment' in: $(printf '%s' "$o" | tail -n 3)"
  else ok; fi
}
expect_moe_refusal "ep not dividing dp" "must divide the data-parallel size 2" 2 "$tmp/moe.json" \
  --expert-parallel-size 4
expect_moe_refusal "ep not dividing the experts" "the expert-parallel size 3 does not divide" 2 "$tmp/moe.json" \
  --expert-parallel-size 3
printf '{"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}' > "$tmp/moe3.json"
expect_moe_refusal "MoE with ZeRO-3" "ZeRO-3 does not support MoE" 1 "$tmp/moe3.json"

finish
