#!/usr/bin/env bash
# Two builds of dspeed on the same benchmarks, interleaved round by round (old, new, old, new, ...), so the
# machine's load falls on both alike; prints each figure's median per build and the new/old ratio.
# Usage: bench/compare_builds.sh OLD_DSPEED NEW_DSPEED MODEL [ROUNDS] [OUT_DIR]
#   MODEL: a checkpoint directory or safetensors file for the serving benchmarks (e.g. one `dspeed train --save`
#   wrote). OUT_DIR keeps every run's output (default: a temporary folder, removed at the end).
# Figures: bench train (tiny and gpt2: tokens/s), bench zero (gpt2-mini at world 2, stages 0 and 3: step time),
# bench decode (decode tokens/s), bench serve (SplitFuse req/s at 4 and 8 clients).
set -euo pipefail
old=$1 new=$2 model=$3 rounds=${4:-3}
if [ -n "${5:-}" ]; then
  out=$5
  mkdir -p "$out"
else
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi

run() {  # run BUILD_LABEL BINARY: one round of every benchmark, JSON lines into $out/LABEL.jsonl
  local label=$1 bin=$2 f="$out/$1.jsonl"
  "$bin" bench train --preset tiny --skip-torch --reps 1 --steps 30 --json "$f.train_tiny" > /dev/null
  "$bin" bench train --preset gpt2 --skip-torch --reps 1 --steps 4 --warmup 1 --json "$f.train_gpt2" > /dev/null
  "$bin" bench zero --model gpt2-mini --worlds 2 --stages 0,3 --steps 4 --warmup 1 --json "$f.zero" > /dev/null
  "$bin" bench decode --model "$model" --skip-torch --repeats 3 >> "$f.decode.txt"
  "$bin" bench serve --model "$model" --requests 32 --clients 4,8 --json "$f.serve" > /dev/null
}

for r in $(seq 1 "$rounds"); do
  echo "round $r/$rounds" >&2
  run old "$old"
  run new "$new"
done

/usr/bin/python3 - "$out" <<'EOF'
import json, os, re, statistics, sys
d = sys.argv[1]
def lines(label, kind):
    p = os.path.join(d, f"{label}.jsonl.{kind}")
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []
def med(xs):
    return statistics.median(xs) if xs else float("nan")
rows = []
for kind, name in (("train_tiny", "train tiny tokens/s"), ("train_gpt2", "train gpt2 tokens/s")):
    rows.append((name, *(med([j["ours_tokens_per_s"] for j in lines(b, kind)]) for b in ("old", "new")), "higher"))
# bench zero: one JSON line per round, a row per (world, stage) with rank 0's median step time in seconds.
def zero_ms(label, stage):
    vals = []
    for j in lines(label, "zero"):
        for row in j.get("rows", []):
            if row.get("stage") == stage and row.get("world") == 2 and row.get("ok"):
                vals.append(1e3 * row["median_step_s"])
    return med(vals)
for stage in (0, 3):
    rows.append((f"zero world 2 stage {stage} step ms", zero_ms("old", stage), zero_ms("new", stage), "lower"))
def decode_tps(label):  # the "dspeed <decode tokens/s> <prefill tokens/s>" line of each round
    vals = []
    p = os.path.join(d, f"{label}.jsonl.decode.txt")
    if os.path.exists(p):
        for line in open(p):
            parts = line.split()
            if len(parts) == 3 and parts[0] == "dspeed":
                vals.append(float(parts[1]))
    return med(vals)
rows.append(("decode tokens/s", decode_tps("old"), decode_tps("new"), "higher"))
def serve(label, clients):  # a JSON line per (policy, clients) cell
    return med([j["requests_per_s"] for j in lines(label, "serve")
                if j.get("clients") == clients and j.get("policy") == "splitfuse"])
for c in (4, 8):
    rows.append((f"serve splitfuse {c} clients req/s", serve("old", c), serve("new", c), "higher"))
print(f"{'figure':<36}{'old':>12}{'new':>12}{'new/old':>10}")
for name, o, n, better in rows:
    print(f"{name:<36}{o:>12.1f}{n:>12.1f}{(n / o if o else float('nan')):>10.3f}  ({better} is better)")
EOF
