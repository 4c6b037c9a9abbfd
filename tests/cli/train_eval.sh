#!/usr/bin/env bash
# End to end: `dspeed train` refuses --steps 0 and a --data folder without shards (and writes nothing); --eval-batches
# applies to the final validation pass; `dspeed eval` on the saved checkpoint, and on its consolidated safetensors,
# prints the final validation loss that train printed (all batches, and --batches 2 against --eval-batches 2); the
# run folder's metrics.csv and loss.svg, and `dspeed plot` over two runs; "auto" config values filled from the
# flags, and a config value that contradicts a flag refused; a config with comments, trailing commas and an ignored
# key accepted with a warning, a misspelt key refused; the tensorboard and csv_monitor blocks write their files.
# Numbers are compared between commands (train against eval, metrics.csv against the monitors), not to constants.
# Usage: train_eval.sh PATH/TO/dspeed   (run in the source root, where the default tokenizer data/tokenizer/gpt2 is)
set -u
dspeed="$1"
source "$(dirname "$0")/lib.sh"
prepare_tokens 40
printf '{"train_micro_batch_size_per_gpu": 2}' > "$tmp/c.json"
common=(--data "$tmp/tokens" --model gpt2-tiny --seq-len 16 --eval-interval 0)

# train LOG ARGS...: dspeed train (not quiet: the summary is checked), stdout and stderr to $tmp/LOG.
train() {
  local log="$1"
  shift
  timeout 120 "$dspeed" train "$@" > "$tmp/$log" 2>&1
}
# The final validation summary line of a train log, and its parts.
final_line() { grep '^validation loss ' "$tmp/$1"; }
final_loss() { final_line "$1" | sed -n 's/^validation loss [0-9.]* -> \([0-9.]*\) nats\/token .*/\1/p'; }
# The loss that `dspeed eval` printed (its stdout in $tmp/NAME.out).
eval_loss() { sed -n 's/^validation loss \([0-9.]*\) nats\/token, perplexity .*/\1/p' "$tmp/$1.out"; }
# dspeed eval ARGS... with stdout to $tmp/NAME.out and stderr to $tmp/NAME.err.
run_eval() {
  local name="$1"
  shift
  timeout 60 "$dspeed" eval "$@" > "$tmp/$name.out" 2> "$tmp/$name.err"
}
# Column COL of the metrics.csv rows of FILE that have a val_loss (the final summary row), rounded to DIGITS.
final_val_csv() { awk -F, -v d="$2" 'NR > 1 && $3 != "" { v = $3 } END { if (v != "") printf "%.*f\n", d, v }' "$1"; }

# 1. --steps 0 trains nothing: one error line pointing to dspeed eval, and no run folder or metrics.
expect_error "--steps 0" "--steps 0.*dspeed eval" \
  timeout 30 "$dspeed" train --config "$tmp/c.json" "${common[@]}" --steps 0 --out "$tmp/r0"
if [ -e "$tmp/r0" ]; then fail "--steps 0 still wrote $tmp/r0: $(ls -A "$tmp/r0")"; else ok; fi

# 2. A --data folder without shards (missing, empty, or with train.bin only) is an error, even with a usable
#    --corpus at hand: nothing is tokenized into it, and a missing folder is not created.
mkdir -p "$tmp/empty" "$tmp/half"
cp "$tmp/tokens/train.bin" "$tmp/half/"
for d in nodata empty half; do
  expect_error "--data $d" "--data '$tmp/$d' has no token shards" \
    timeout 30 "$dspeed" train --config "$tmp/c.json" --data "$tmp/$d" --corpus "$tmp/corpus" --seq-len 16 --steps 1 \
    -q --out "$tmp/r_$d"
done
if [ -e "$tmp/nodata" ]; then fail "the missing --data folder was created: $(ls -A "$tmp/nodata")"
elif [ -n "$(ls -A "$tmp/empty")" ]; then fail "shards written into the empty --data folder: $(ls -A "$tmp/empty")"
elif [ "$(ls -A "$tmp/half")" != train.bin ]; then fail "the --data folder with train.bin only now holds: $(ls -A "$tmp/half")"
elif [ -e "$tmp/r_nodata" ] || [ -e "$tmp/r_empty" ] || [ -e "$tmp/r_half" ]; then fail "a run folder was written"
else ok; fi

# 3. --eval-batches 2 applies to the final pass too; without it the final pass covers all validation batches. Both
#    runs save their checkpoint for the eval checks below.
train a.log --config "$tmp/c.json" "${common[@]}" --steps 3 --eval-batches 2 --save "$tmp/ck_a" --out "$tmp/run_a" ||
  fail "train --eval-batches 2: $(tail -n 5 "$tmp/a.log")"
train b.log --config "$tmp/c.json" "${common[@]}" --steps 3 --save "$tmp/ck_b" --out "$tmp/run_b" ||
  fail "train with all validation batches: $(tail -n 5 "$tmp/b.log")"
loss_a=$(final_loss a.log)
loss_b=$(final_loss b.log)
nval=$(final_line b.log | sed -n 's/.* over all \([0-9]*\) validation batches$/\1/p')
if ! final_line a.log | grep -Eq '^validation loss [0-9.]+ -> [0-9]+\.[0-9]{4} nats/token over the first 2 validation batches$'
then
  fail "--eval-batches 2 final line: '$(final_line a.log)'"
else ok; fi
if [ -z "$nval" ] || [ "$nval" -le 2 ] || [ -z "$loss_b" ]; then fail "final line without --eval-batches: '$(final_line b.log)'"
else ok; fi
# The summary row of metrics.csv carries the same final validation loss.
if [ -z "$loss_b" ] || [ "$(final_val_csv "$tmp/run_b/metrics.csv" 4)" != "$loss_b" ]; then
  fail "metrics.csv val_loss $(final_val_csv "$tmp/run_b/metrics.csv" 6) vs printed '$loss_b'"
else ok; fi

# 4. dspeed eval on the saved checkpoints prints the loss train printed: over all batches (and as many batches as
#    train said), and over the first 2 against --eval-batches 2; so does the consolidated safetensors file.
run_eval eb --model "$tmp/ck_b" --data "$tmp/tokens" --seq-len 16 --micro-batch 2 ||
  fail "eval of the checkpoint: $(cat "$tmp/eb.err")"
if [ -z "$(eval_loss eb)" ] || [ "$(eval_loss eb)" != "$loss_b" ]; then
  fail "eval says '$(cat "$tmp/eb.out")', train said '$(final_line b.log)'"
elif [ "$(grep -c . "$tmp/eb.out")" -ne 1 ]; then fail "eval stdout is not one line: $(cat "$tmp/eb.out")"
elif ! grep -q "val.bin: $nval batches of 2 x 16 tokens" "$tmp/eb.err" ||
     ! grep -q "($((nval * 2 * 16)) tokens)\$" "$tmp/eb.out"; then
  fail "eval batches/tokens differ from train's $nval batches: $(cat "$tmp/eb.err" "$tmp/eb.out")"
else ok; fi
# perplexity = exp(loss) (the printed loss is rounded to 4 decimals: relative error below 1e-4).
if ! sed -n 's/.* nats\/token, perplexity \([0-9.]*\) .*/\1/p' "$tmp/eb.out" |
     awk -v l="$(eval_loss eb)" '{ e = exp(l); r = ($1 - e) / e; exit !(NF == 1 && r < 1e-4 && r > -1e-4) }'; then
  fail "perplexity is not exp(loss): $(cat "$tmp/eb.out")"
else ok; fi
run_eval ea --model "$tmp/ck_a" --data "$tmp/tokens" --seq-len 16 --micro-batch 2 --batches 2 ||
  fail "eval --batches 2: $(cat "$tmp/ea.err")"
if [ -z "$(eval_loss ea)" ] || [ "$(eval_loss ea)" != "$loss_a" ]; then
  fail "eval --batches 2 says '$(cat "$tmp/ea.out")', train --eval-batches 2 said '$(final_line a.log)'"
elif ! grep -q "(64 tokens)\$" "$tmp/ea.out"; then fail "eval --batches 2 token count: $(cat "$tmp/ea.out")"
else ok; fi
if timeout 60 "$dspeed" ckpt consolidate "$tmp/ck_b" "$tmp/b.safetensors" > "$tmp/cons.log" 2>&1; then
  run_eval es --model "$tmp/b.safetensors" --data "$tmp/tokens" --seq-len 16 --micro-batch 2 ||
    fail "eval of the safetensors file: $(cat "$tmp/es.err")"
  if [ -z "$(eval_loss es)" ] || [ "$(eval_loss es)" != "$loss_b" ]; then
    fail "eval of the safetensors file says '$(cat "$tmp/es.out")', train said '$(final_line b.log)'"
  else ok; fi
else fail "ckpt consolidate: $(cat "$tmp/cons.log")"; fi
expect_error "eval: no such model" "no_such_model.*does not exist" \
  timeout 30 "$dspeed" eval --model "$tmp/no_such_model" --data "$tmp/tokens" --seq-len 16 --micro-batch 2
expect_error "eval: --data without shards" "no token shard.*empty.*dspeed data prepare" \
  timeout 30 "$dspeed" eval --model "$tmp/ck_b" --data "$tmp/empty" --seq-len 16 --micro-batch 2
expect_error "eval: --data missing" "no token shard.*nodata" \
  timeout 30 "$dspeed" eval --model "$tmp/ck_b" --data "$tmp/nodata" --seq-len 16 --micro-batch 2
if [ -n "$(ls -A "$tmp/empty")" ] || [ -e "$tmp/nodata" ]; then fail "eval wrote into a --data folder"; else ok; fi

# 5. The run folder: metrics.csv and an SVG loss.svg (rendered to PNG by rsvg-convert where installed); dspeed plot
#    of two runs writes the file it prints, with both runs and their final validation losses; no metrics.csv fails.
if [ ! -s "$tmp/run_b/metrics.csv" ] || [ ! -s "$tmp/run_b/loss.svg" ]; then
  fail "run folder holds: $(ls -A "$tmp/run_b")"
elif ! head -c 5 "$tmp/run_b/loss.svg" | grep -Eq '^(<\?xml|<svg)' || ! grep -q '</svg>' "$tmp/run_b/loss.svg"; then
  fail "loss.svg is not SVG: $(head -c 80 "$tmp/run_b/loss.svg")"
else ok; fi
if command -v rsvg-convert > /dev/null; then
  if ! rsvg-convert -o "$tmp/loss.png" "$tmp/run_b/loss.svg" 2> "$tmp/rsvg.err"; then fail "rsvg-convert: $(cat "$tmp/rsvg.err")"
  elif [ "$(head -c 4 "$tmp/loss.png" | tail -c 3)" != PNG ]; then fail "rsvg-convert wrote no PNG"
  else ok; fi
else
  echo "rsvg-convert not found; loss.svg is not rendered"
fi
out=$(timeout 30 "$dspeed" plot "$tmp/run_a" "$tmp/run_b" -o "$tmp/both.svg" 2> "$tmp/plot.err")
rc=$?
if [ "$rc" -ne 0 ]; then fail "plot of two runs: exit $rc: $(cat "$tmp/plot.err")"
elif [ "$out" != "$tmp/both.svg" ]; then fail "plot printed '$out', not the file it writes"
elif [ ! -s "$tmp/both.svg" ] || ! head -c 5 "$tmp/both.svg" | grep -Eq '^(<\?xml|<svg)'; then fail "plot wrote no SVG"
elif ! grep -q '>run_a<' "$tmp/both.svg" || ! grep -q '>run_b<' "$tmp/both.svg"; then fail "plot lacks a run's name"
else
  # Each run's final validation loss (metrics.csv, to the chart's 3 decimals) is labelled.
  for r in run_a run_b; do
    v=$(final_val_csv "$tmp/$r/metrics.csv" 3)
    if [ -z "$v" ] || ! grep -q ">val $v @ 3<" "$tmp/both.svg"; then
      fail "plot lacks '$r' validation loss '$v': $(grep -o '>val [^<]*<' "$tmp/both.svg" | tr '\n' ' ')"; v=bad; break
    fi
  done
  [ "$v" = bad ] || ok
fi
expect_error "plot: no metrics.csv" "empty/metrics.csv.*dspeed train --out" \
  timeout 30 "$dspeed" plot "$tmp/empty" -o "$tmp/none.svg"
if [ -e "$tmp/none.svg" ]; then fail "a failed plot wrote its file"; else ok; fi

# 6. "auto" in the config takes the flags (and the flag defaults), each resolved value listed with its source; a
#    config value that contradicts the flag is refused naming both.
printf '{"train_micro_batch_size_per_gpu": "auto", "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
  "gradient_clipping": "auto"}' > "$tmp/auto.json"
if train auto.log --config "$tmp/auto.json" "${common[@]}" --steps 2 --eval-batches 1 --micro-batch 2 --lr 1e-3 \
     --out "$tmp/run_auto"; then
  missing=""
  for want in "auto    3 value(s) filled:" "'train_micro_batch_size_per_gpu' = 2 (--micro-batch)" \
              "'optimizer.params.lr' = 0.001 (--lr)" "'gradient_clipping' = 1.0 (default of --max-grad-norm)" \
              "train_batch_size 2 = micro batch 2 x" "optimizer: AdamW (decoupled weight decay) lr 0.001 " \
              "gradient_clipping 1, "; do
    grep -qF -- "$want" "$tmp/auto.log" || missing="$missing [$want]"
  done
  if [ -n "$missing" ]; then fail "auto run output lacks:$missing: $(head -n 14 "$tmp/auto.log")"
  elif [ "$(awk -F, 'NR > 1 && $3 == "" { print $4 }' "$tmp/run_auto/metrics.csv" | sort -u)" != 1.000000e-03 ]; then
    fail "auto lr not used in training: $(cut -d, -f1-4 "$tmp/run_auto/metrics.csv")"
  else ok; fi
else fail "auto config run: $(tail -n 5 "$tmp/auto.log")"; fi
printf '{"train_micro_batch_size_per_gpu": "auto", "optimizer": {"type": "AdamW", "params": {"lr": 3e-4}},
  "gradient_clipping": "auto"}' > "$tmp/auto_lr.json"
expect_error "config lr vs --lr" "'optimizer.params.lr' is 0.0003 .*--lr is 0.001" \
  timeout 30 "$dspeed" train --config "$tmp/auto_lr.json" "${common[@]}" --steps 2 --micro-batch 2 --lr 1e-3 \
  --out "$tmp/run_auto_lr"
if [ -e "$tmp/run_auto_lr" ]; then fail "the refused config still wrote a run folder"; else ok; fi

# 7. Lenient JSON: // comments (also after "//" inside a string), trailing commas, and a key DeepSpeed ignores (a
#    warning names it); the values around them are read (micro batch 3, lr 5e-4, the commented-out accumulation
#    not). A misspelt key is refused with the right spelling.
cat > "$tmp/lax.json" << 'EOF'
// a comment before the object
{
  "train_micro_batch_size_per_gpu": 3, // a comment after a value
  // "gradient_accumulation_steps": 7,
  "cuda_visible_devices": "http://a//b",
  "optimizer": {"type": "AdamW", "params": {"lr": 5e-4,},},
}
EOF
if train lax.log --config "$tmp/lax.json" "${common[@]}" --steps 1 --eval-batches 1 --out "$tmp/run_lax"; then
  if ! grep -q "^warning: .*lax.json has keys that DeepSpeed ignores.*: 'cuda_visible_devices'\$" "$tmp/lax.log"; then
    fail "no warning naming the ignored key: $(head -n 3 "$tmp/lax.log")"
  elif ! grep -qF "train_batch_size 3 = micro batch 3 x gradient accumulation 1 x" "$tmp/lax.log" ||
       ! grep -qF "lr 0.0005 " "$tmp/lax.log"; then
    fail "lenient config values not read: $(grep -E 'batch:|optimizer:' "$tmp/lax.log")"
  elif [ ! -s "$tmp/run_lax/metrics.csv" ]; then fail "lenient config run wrote no metrics"
  else ok; fi
else fail "config with comments and trailing commas: $(tail -n 5 "$tmp/lax.log")"; fi
printf '{"train_micro_batch_size_per_gpu": 2, "grandient_accumulation_steps": 1}' > "$tmp/typo.json"
expect_error "misspelt key" "'grandient_accumulation_steps'.*did you mean 'gradient_accumulation_steps'" \
  timeout 30 "$dspeed" train --config "$tmp/typo.json" "${common[@]}" --steps 1 --out "$tmp/run_typo"

# 8. The tensorboard and csv_monitor blocks: one event file under OUTPUT_PATH/JOB, and DeepSpeed's csv files (CRLF
#    line ends) with one row per step holding the losses of metrics.csv, indexed as DeepSpeed's engine indexes them:
#    a step's train_loss at the samples seen before it ((STEP - 1) x train_batch_size, written in backward).
printf '{"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
  "tensorboard": {"enabled": true, "output_path": "%s/tb", "job_name": "j"},
  "csv_monitor": {"enabled": true, "output_path": "%s/csv", "job_name": "j"}}' "$tmp" "$tmp" > "$tmp/mon.json"
if train mon.log --config "$tmp/mon.json" "${common[@]}" --steps 3 --eval-batches 1 --out "$tmp/run_mon"; then
  tbs=$(sed -n 's/.*batch: train_batch_size \([0-9]*\) = .*/\1/p' "$tmp/mon.log")
  events=$(find "$tmp/tb/j" -maxdepth 1 -type f -name 'events.out.tfevents.*' 2> /dev/null)
  if [ "$(printf '%s' "$events" | grep -c .)" -ne 1 ] || [ "$(ls -A "$tmp/tb/j" | grep -c .)" -ne 1 ]; then
    fail "tensorboard folder holds: $(ls -A "$tmp/tb/j" 2> /dev/null)"
  elif ! grep -aq 'brain.Event:2' "$events" ||
       [ "$(grep -ao 'Train/Samples/train_loss' "$events" | grep -c .)" -ne 3 ]; then
    fail "event file lacks the version record or 3 train_loss scalars"
  else ok; fi
  f="$tmp/csv/j/Train_Samples_train_loss.csv"
  # Expected: the header, then (STEP-1)*TBS,LOSS for each training row of metrics.csv (CRLF everywhere).
  want=$(printf 'step,train_loss\r\n'; awk -F, -v t="$tbs" 'NR > 1 && $3 == "" { printf "%d,%s\r\n", ($1 - 1) * t, $2 }' \
         "$tmp/run_mon/metrics.csv")
  got=$(awk -F, 'NR == 1 { print; next } { sub(/\r$/, "", $2); printf "%s,%.6f\r\n", $1, $2 }' "$f" 2> /dev/null)
  if [ -z "$tbs" ] || [ "$tbs" -le 1 ]; then fail "no train_batch_size in the summary: $(head -n 5 "$tmp/mon.log")"
  elif [ ! -f "$f" ]; then fail "no $f; csv folder holds: $(ls -A "$tmp/csv/j" 2> /dev/null)"
  elif [ "$(head -n 1 "$f")" != $'step,train_loss\r' ]; then fail "csv header: $(head -n 1 "$f" | od -c | head -n 2)"
  elif [ "$(grep -c $'\r$' "$f")" -ne 4 ] || [ "$(grep -c . "$f")" -ne 4 ]; then fail "csv lines (want 4, CRLF): $(od -c "$f")"
  elif [ "$got" != "$want" ]; then
    fail "train_loss csv does not match metrics.csv (train_batch_size $tbs):"; diff <(printf '%s' "$want") <(printf '%s' "$got")
  else ok; fi
  # The final validation loss too, at the last step's sample count.
  vf="$tmp/csv/j/Train_Samples_val_loss.csv"
  vwant="$((3 * tbs)),$(final_val_csv "$tmp/run_mon/metrics.csv" 6)"
  vgot=$(sed -n '2{s/\r$//;p}' "$vf" 2> /dev/null | awk -F, '{ printf "%s,%.6f", $1, $2 }')
  if [ "$vgot" != "$vwant" ]; then fail "val_loss csv row '$vgot', want '$vwant'"; else ok; fi
else fail "monitor run: $(tail -n 5 "$tmp/mon.log")"; fi

finish || exit 1
echo "train_eval.sh: OK"
