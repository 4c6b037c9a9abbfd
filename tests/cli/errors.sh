#!/usr/bin/env bash
# End-to-end checks of `dspeed` on bad input: each case must exit non-zero with exactly one line on stderr that
# starts with "error:" and contains the expected words. Usage: errors.sh PATH/TO/dspeed
set -u
dspeed="$1"
source "$(dirname "$0")/lib.sh"

# Tiny prepared data so that cases that get past data loading do not need the corpus.
mkdir -p "$tmp/corpus"
for i in 1 2 3 4 5 6; do for j in 1 2 3 4 5 6 7 8; do printf 'Document %s says hello to the world, again and again (%s).\n' "$i" "$j"; done > "$tmp/corpus/doc$i.txt"; done
"$dspeed" data prepare --input "$tmp/corpus" --out "$tmp/tokens" --val-pattern 'doc6' > /dev/null 2>&1 || {
  echo "FAIL: data prepare on a small corpus"; exit 1; }

printf '{"train_batch_size": 8, "train_micro_batch_size_per_gpu": 3}' > "$tmp/bad_batch.json"
printf '{"train_batch_size": 8,, }' > "$tmp/malformed.json"
printf '{"train_batch_size": 8, "gradient_clippin": 1.0}' > "$tmp/typo.json"
printf '{"n_layer": 2, "n_head": 3, "n_embd": 128}' > "$tmp/bad_model.json"
printf '{"train_micro_batch_size_per_gpu": 2}' > "$tmp/ok.json"
printf '{"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme", "nvme_path": "%s"}}}' "$tmp/no_nvme" > "$tmp/nvme_missing.json"
printf '{"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme", "nvme_path": "%s"}}}' "$tmp/ok.json" > "$tmp/nvme_file.json"
printf '{"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}' > "$tmp/offload_cpu.json"

common=(--data "$tmp/tokens" --seq-len 8 --steps 2 -q --out "$tmp/run")
expect_error "missing config file" "no_such_config.json" "$dspeed" train --config "$tmp/no_such_config.json" "${common[@]}"
expect_error "malformed JSON" "line 1" "$dspeed" train --config "$tmp/malformed.json" "${common[@]}"
expect_error "impossible batch sizes" "train_batch_size" "$dspeed" train --config "$tmp/bad_batch.json" "${common[@]}"
expect_error "unknown key" "did you mean 'gradient_clipping'" "$dspeed" train --config "$tmp/typo.json" "${common[@]}"
expect_error "unknown model preset" "gpt2-tiny" "$dspeed" train --model gpt3-huge "${common[@]}"
expect_error "bad model config" "divisible" "$dspeed" train --model "$tmp/bad_model.json" "${common[@]}"
expect_error "missing data" "data prepare" "$dspeed" train --data "$tmp/nowhere" --corpus "$tmp/nocorpus" --steps 1 -q
expect_error "memory limit" "out of device memory" "$dspeed" train --config "$tmp/ok.json" --device-memory-limit 8MiB "${common[@]}"
expect_error "sequence longer than the model" "block_size" "$dspeed" train --config "$tmp/ok.json" --data "$tmp/tokens" --seq-len 4096 --steps 1 -q --out "$tmp/run"
expect_error "bad memory size" "memory size" "$dspeed" train --config "$tmp/ok.json" --device-memory-limit lots "${common[@]}"
expect_error "missing nvme_path" "does not exist" "$dspeed" train --config "$tmp/nvme_missing.json" "${common[@]}"
expect_error "nvme_path is a file" "is not a directory" "$dspeed" train --config "$tmp/nvme_file.json" "${common[@]}"
expect_error "host memory limit" "out of host memory" "$dspeed" train --config "$tmp/offload_cpu.json" --host-memory-limit 1MiB "${common[@]}"

# And a good run on the same data works.
if "$dspeed" train --config "$tmp/ok.json" "${common[@]}" > /dev/null 2>&1 && [ -s "$tmp/run/metrics.csv" ]; then
  passed=$((passed + 1))
else
  echo "FAIL: a valid small run failed"; failures=$((failures + 1))
fi

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
