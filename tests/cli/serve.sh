#!/usr/bin/env bash
# End to end: gpt2-tiny trained for 3 steps (dspeed train --save) and consolidated (dspeed ckpt consolidate), then
# `dspeed generate`: greedy is repeatable, stops at --max-tokens, and the checkpoint directory and the safetensors
# file give the same text; `dspeed serve` over HTTP: completions whole and streamed agree with each other and with
# generate (text, and token ids for a token-id prompt), /metrics shows no KV block held once they finish, a second
# server on the same port is refused, SIGTERM lets a running request finish and ends the server with status 0,
# and with --shutdown-timeout 0 gives every open stream the shutdown event. Last, user mistakes,
# each one error line and a non-zero exit, no hang. JSON is checked with sed, not python3 or jq (CI has neither).
# The HTTP part needs curl (scripts/setup.sh installs it) and is skipped without it.
# Usage: serve.sh PATH/TO/dspeed   (it runs in the source root, where the default tokenizer data/tokenizer/gpt2 is)
set -u
dspeed="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.." || exit 1
train_tiny
timeout 60 "$dspeed" ckpt consolidate "$tmp/ck" "$tmp/tiny.safetensors" > /dev/null 2>&1 || {
  echo "FAIL: ckpt consolidate"; exit 1; }
model="$tmp/tiny.safetensors"  # served as "tiny" (the file's stem)

# gen NAME ARGS...: greedy, 8 tokens (EOS ignored, so exactly 8), stdout to $tmp/NAME.txt and stderr to NAME.err.
gen() {
  local name="$1"
  shift
  timeout 60 "$dspeed" generate --max-tokens 8 --temperature 0 --ignore-eos "$@" > "$tmp/$name.txt" 2> "$tmp/$name.err"
}
# The generated text of $tmp/NAME.txt (generate adds one newline) as a JSON string body, as the server escapes it.
json_text() {
  head -c -1 "$tmp/$1.txt" | tr '\n' '\001' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/\\t/g' -e 's/\x01/\\n/g'
}
# Field values in JSON text on stdin, one per line: strings (escapes kept) and integers / integer arrays.
jstr() { grep -o '"'"$1"'":"\([^"\\]\|\\.\)*"' | sed 's/^"[a-z_]*":"//; s/"$//'; }
jint() { grep -o "\"$1\":[0-9-]*" | cut -d: -f2; }
jids() { grep -o "\"$1\":\[[0-9,]*\]" | sed 's/.*\[\(.*\)\]/\1/; s/,/ /g'; }
jusage() {  # "usage":{...} as P,C,T
  grep -o '"usage":{"prompt_tokens":[0-9]*,"completion_tokens":[0-9]*,"total_tokens":[0-9]*}' | tr -dc '0-9,'
}

# 1. generate: twice the same text from the checkpoint directory, one clean summary line with exactly 8 tokens, and
#    the same text again from the consolidated file (same weights).
gen g1 --model "$tmp/ck" --prompt "The" || fail "generate from the checkpoint: $(cat "$tmp/g1.err")"
gen g2 --model "$tmp/ck" --prompt "The" || fail "generate again: $(cat "$tmp/g2.err")"
gen g3 --model "$model" --prompt "The" || fail "generate from the safetensors file: $(cat "$tmp/g3.err")"
if [ "$(wc -c < "$tmp/g1.txt")" -le 1 ]; then fail "generate printed no text"
elif ! cmp -s "$tmp/g1.txt" "$tmp/g2.txt"; then
  fail "greedy generate differs between runs: '$(cat "$tmp/g1.txt")' vs '$(cat "$tmp/g2.txt")'"
else ok; fi
if [ "$(grep -c . "$tmp/g1.err")" -ne 1 ] ||
   ! grep -q '^generate: prompt 1 tokens, generated 8 tokens in .*, finish length$' "$tmp/g1.err"; then
  fail "generate summary: $(cat "$tmp/g1.err")"
else ok; fi
if ! cmp -s "$tmp/g1.txt" "$tmp/g3.txt"; then
  fail "directory and file differ: '$(cat "$tmp/g1.txt")' vs '$(cat "$tmp/g3.txt")'"
else ok; fi
# Token ids in, token ids out (no tokenizer): 8 ids.
prompt_ids="464,3290,318,257"
gen gi --model "$model" --prompt-ids "$prompt_ids" --tokenizer "" || fail "generate --prompt-ids: $(cat "$tmp/gi.err")"
gen_ids=$(tr -s ' \n' '  ' < "$tmp/gi.txt" | sed 's/^ //; s/ $//')
if ! printf '%s' "$gen_ids" | grep -Eq '^([0-9]+ ){7}[0-9]+$'; then fail "generate --prompt-ids printed '$gen_ids'"
else ok; fi

# 2. The server, through curl.
http_checks() {
  start_server s1 --model "$model" || { fail "dspeed serve gave no banner in 30 s: $(cat "$tmp/s1.err")"; return; }
  local base="http://127.0.0.1:$port" deadline=$((SECONDS + 30)) code body
  until curl -sf --max-time 2 "$base/health" > "$tmp/health" 2> /dev/null; do
    if [ "$SECONDS" -ge "$deadline" ] || ! kill -0 "$pid" 2> /dev/null; then
      fail "GET /health never answered: $(cat "$tmp/s1.err")"; return
    fi
    sleep 0.1
  done
  if [ "$(cat "$tmp/health")" != '{"status":"ok"}' ]; then fail "/health says '$(cat "$tmp/health")'"; else ok; fi
  body=$(curl -sS --max-time 10 "$base/v1/models")
  if ! printf '%s' "$body" | grep -q '"data":\[{"id":"tiny","object":"model",.*"max_model_len":256'; then
    fail "/v1/models: $body"
  else ok; fi

  post() {  # BODY: the status code on stdout, the body in $tmp/resp
    curl -sS --max-time 60 -o "$tmp/resp" -w '%{http_code}' -H 'Content-Type: application/json' -d "$1" \
      "$base/v1/completions"
  }
  # Whole: the fields, and the text of generate --prompt "The".
  code=$(post '{"model":"tiny","prompt":"The","max_tokens":8,"temperature":0,"ignore_eos":true}')
  body=$(cat "$tmp/resp")
  local text
  text=$(printf '%s' "$body" | jstr text)
  if [ "$code" != 200 ]; then fail "completion: status $code: $body"
  elif ! printf '%s' "$body" |
       grep -q '^{"id":"cmpl-[0-9a-f]*","object":"text_completion","created":[0-9]*,"model":"tiny","choices":\[{"text":'
  then
    fail "completion header fields: $body"
  elif [ "$(printf '%s' "$body" | jstr finish_reason)" != length ]; then fail "finish_reason: $body"
  elif [ "$(printf '%s' "$body" | jusage)" != 1,8,9 ]; then fail "usage: $body"
  elif [ "$text" != "$(json_text g3)" ]; then fail "server text '$text' != generate text '$(json_text g3)'"
  else ok; fi

  # Streamed: server-sent events of one id, their texts joined give the whole text, one finish_reason (on the last
  # text chunk), then the usage chunk and [DONE].
  curl -sS -N --max-time 60 -D "$tmp/stream.hdr" -o "$tmp/stream" -H 'Content-Type: application/json' \
    -d '{"prompt":"The","max_tokens":8,"temperature":0,"ignore_eos":true,"stream":true,
         "stream_options":{"include_usage":true}}' \
    "$base/v1/completions" || fail "streamed completion: curl failed"
  local events ids joined
  events=$(grep '^data: ' "$tmp/stream")
  ids=$(printf '%s\n' "$events" | grep -o '^data: {"id":"cmpl-[0-9a-f]*"' | sort -u | grep -c .)
  joined=$(printf '%s\n' "$events" | jstr text | tr -d '\n')
  if ! grep -qi '^content-type: text/event-stream' "$tmp/stream.hdr"; then
    fail "stream content type: $(cat "$tmp/stream.hdr")"
  elif [ "$(printf '%s\n' "$events" | tail -n 1)" != "data: [DONE]" ]; then
    fail "stream does not end with [DONE]: $(tail -n 3 "$tmp/stream")"
  elif [ "$ids" -ne 1 ]; then fail "stream chunks carry $ids ids"
  elif [ "$joined" != "$text" ]; then fail "streamed text '$joined' != whole text '$text'"
  elif [ "$(printf '%s\n' "$events" | grep -c '"finish_reason":"')" -ne 1 ]; then
    fail "stream has not exactly one finish_reason: $(cat "$tmp/stream")"
  elif ! printf '%s\n' "$events" | tail -n 3 | head -n 1 | grep -q '"finish_reason":"length"'; then
    fail "finish_reason is not on the last text chunk: $(tail -n 6 "$tmp/stream")"
  elif ! printf '%s\n' "$events" | tail -n 2 | head -n 1 | grep -q '"choices":\[\],"usage":{' ||
       [ "$(printf '%s\n' "$events" | tail -n 2 | head -n 1 | jusage)" != 1,8,9 ]; then
    fail "usage chunk: $(tail -n 4 "$tmp/stream")"
  else ok; fi

  # A token-id prompt: the response carries the token ids, the same as generate --prompt-ids.
  code=$(post "{\"prompt\":[$prompt_ids],\"max_tokens\":8,\"temperature\":0,\"ignore_eos\":true}")
  body=$(cat "$tmp/resp")
  if [ "$code" != 200 ]; then fail "token-id completion: status $code: $body"
  elif [ "$(printf '%s' "$body" | jids token_ids)" != "$gen_ids" ]; then
    fail "server token ids '$(printf '%s' "$body" | jids token_ids)' != generate's '$gen_ids'"
  elif [ "$(printf '%s' "$body" | jint prompt_tokens)" != 4 ]; then fail "token-id usage: $body"
  else ok; fi

  # A request longer than the context: 400 with an OpenAI error body saying what to change.
  code=$(post '{"prompt":"The","max_tokens":300}')
  body=$(cat "$tmp/resp")
  if [ "$code" != 400 ] || ! printf '%s' "$body" | grep -q '"type":"invalid_request_error"' ||
     ! printf '%s' "$body" | grep -q "context of 256 tokens; shorten the prompt or lower max_tokens"; then
    fail "over-long request: status $code: $body"
  else ok; fi

  # All finished: no KV block held, nothing running, 3 finished and 1 refused as invalid.
  body=$(curl -sS --max-time 10 "$base/metrics")
  local m
  for m in 'dspeed_kv_blocks_used 0' 'dspeed_running_sequences 0' 'dspeed_queue_depth 0' \
           'dspeed_requests_finished_total 3' 'dspeed_requests_rejected_total{reason="invalid"} 1'; do
    if ! printf '%s\n' "$body" | grep -qxF "$m"; then
      fail "/metrics lacks '$m': $(printf '%s\n' "$body" | grep -v '^#' | head -n 12)"; m=bad; break
    fi
  done
  [ "$m" = bad ] || ok

  # A second server on the same port is refused by name, and the first one keeps answering.
  expect_error "port in use" "cannot listen on 127.0.0.1:$port" \
    timeout 30 "$dspeed" serve --model "$model" --port "$port"
  if curl -sf --max-time 5 "$base/health" > /dev/null; then ok; else fail "the first server stopped answering"; fi

  # SIGTERM while a long request is in flight: the request gets its time (--shutdown-timeout, 30 s by default)
  # and completes; the server then exits 0.
  post '{"prompt":"The","max_tokens":240,"ignore_eos":true}' > "$tmp/long.code" &
  local client=$! i
  for i in $(seq 1 100); do
    curl -s --max-time 5 "$base/metrics" 2> /dev/null | grep -qx 'dspeed_requests_total 4' && break
    sleep 0.05
  done
  stop_server "$pid"
  if ! wait "$client"; then fail "the in-flight client failed: $(cat "$tmp/resp" 2> /dev/null)"
  elif [ "$(cat "$tmp/long.code")" = 200 ] && [ "$(jint completion_tokens < "$tmp/resp")" = 240 ]; then ok
  else fail "in-flight request at SIGTERM: status $(cat "$tmp/long.code"): $(cat "$tmp/resp")"; fi
  if grep -q '^serve: SIGTERM received, stopping: running requests have 30 s to finish' "$tmp/s1.err"; then ok
  else fail "server stderr: $(cat "$tmp/s1.err")"; fi

  # With --shutdown-timeout 0 and one sequence at a time, SIGTERM finds streams queued or running: each one ends
  # with [DONE] (it finished first) or with the shutdown error event, and always with a clean end of the response
  # (curl exits 0; a cut chunked body is its error 18).
  start_server s2 --model "$model" --shutdown-timeout 0 --max-sequences 1 ||
    { fail "second server: $(cat "$tmp/s2.err")"; return; }
  base="http://127.0.0.1:$port"
  local clients=()
  for i in 1 2 3 4 5 6; do
    curl -sS -N --max-time 60 -o "$tmp/sig$i" -H 'Content-Type: application/json' \
      -d '{"prompt":"The","max_tokens":200,"ignore_eos":true,"stream":true}' "$base/v1/completions" \
      2> "$tmp/sig$i.err" &
    clients+=($!)
  done
  for i in $(seq 1 200); do
    curl -s --max-time 5 "$base/metrics" 2> /dev/null | grep -qx 'dspeed_requests_total 6' && break
    sleep 0.02
  done
  stop_server "$pid"
  local got_event=0 bad=""
  for i in 1 2 3 4 5 6; do
    if ! wait "${clients[$((i - 1))]}"; then bad="stream $i: curl failed: $(cat "$tmp/sig$i.err")"; break; fi
    if grep -q '^data: {"error":{"message":"\[serve\] the server is shutting down' "$tmp/sig$i"; then
      got_event=$((got_event + 1))
    elif [ "$(grep '^data: ' "$tmp/sig$i" | tail -n 1)" != "data: [DONE]" ]; then
      bad="stream $i neither finished nor got the shutdown event: $(tail -c 300 "$tmp/sig$i")"; break
    fi
  done
  if [ -n "$bad" ]; then fail "$bad"
  elif [ "$got_event" -eq 0 ]; then fail "no stream was open at SIGTERM (all six finished first)"
  else ok; echo "$got_event of 6 streams got the shutdown event"; fi
}
if command -v curl > /dev/null; then
  http_checks
else
  echo "curl not found (scripts/setup.sh installs it); the HTTP part is skipped"
  # Without curl, still: a second server on a port in use is refused, and SIGTERM stops the first cleanly.
  if start_server s1 --model "$model"; then
    expect_error "port in use" "cannot listen on 127.0.0.1:$port" \
      timeout 30 "$dspeed" serve --model "$model" --port "$port"
    stop_server "$pid"
  else fail "dspeed serve gave no banner in 30 s: $(cat "$tmp/s1.err")"; fi
fi

# 3. User mistakes: one error line, non-zero exit, no hang.
expect_error "serve: no such model" "no_such_model.*give a checkpoint directory" \
  timeout 30 "$dspeed" serve --model "$tmp/no_such_model" --port 0
expect_error "generate: no such model" "no_such_model.*give a checkpoint directory" \
  timeout 30 "$dspeed" generate --model "$tmp/no_such_model" --prompt "The"
printf '{%% for m in messages %%}{{ m.content | shout }}{%% endfor %%}' > "$tmp/bad.jinja"
expect_error "unsupported chat template filter" "bad.jinja., line 1, column .*the filter 'shout'" \
  timeout 30 "$dspeed" serve --model "$model" --port 0 --chat-template "$tmp/bad.jinja"
expect_error "missing chat template" "cannot read the chat template .*no_such.jinja" \
  timeout 30 "$dspeed" serve --model "$model" --port 0 --chat-template "$tmp/no_such.jinja"
expect_error "unknown policy" "'bogus'.*splitfuse, prefill-first, static" \
  timeout 30 "$dspeed" serve --model "$model" --port 0 --policy bogus
# A safetensors file without "ds_model" metadata: the key renamed in place (same length, so the header length and
# the tensor offsets stay valid). It still serves with --arch, which shows the file is otherwise sound.
header_len=$(od -An -t u8 -N 8 "$model" | tr -d ' ')
cp "$model" "$tmp/nometa.safetensors"
head -c $((8 + header_len)) "$model" | tail -c "$header_len" | sed 's/"ds_model"/"xx_model"/' |
  dd of="$tmp/nometa.safetensors" bs=1 seek=8 conv=notrunc 2> /dev/null
if grep -q '"ds_model"' <(head -c $((8 + header_len)) "$tmp/nometa.safetensors"); then
  fail "could not strip ds_model"
fi
expect_error "no ds_model metadata" "nometa.safetensors.*ds_model.*--arch" \
  timeout 30 "$dspeed" serve --model "$tmp/nometa.safetensors" --port 0
gen ga --model "$tmp/nometa.safetensors" --arch gpt2-tiny --prompt "The" || fail "generate --arch: $(cat "$tmp/ga.err")"
if cmp -s "$tmp/ga.txt" "$tmp/g3.txt"; then ok
else fail "--arch gpt2-tiny on the stripped file gives '$(cat "$tmp/ga.txt")'"; fi
expect_error "prompt + max_tokens past the context" "1 tokens and max_tokens is 300.*context of 256 tokens" \
  timeout 30 "$dspeed" generate --model "$model" --prompt "The" --max-tokens 300
expect_error "token id outside the vocabulary" "token id 50257 is outside the vocabulary" \
  timeout 30 "$dspeed" generate --model "$model" --prompt-ids 464,50257
expect_error "no prompt" "give a prompt" timeout 30 "$dspeed" generate --model "$model"
expect_error "unknown device" "unknown device 'gpu'.*cpu, cuda or cuda:N" \
  timeout 30 "$dspeed" serve --model "$model" --port 0 --device gpu
# A build without CUDA, or a machine without a GPU, says which and points to --device cpu. With both, greedy
# text on the GPU is the CPU's.
if ! nvidia-smi > /dev/null 2>&1; then
  expect_error "cuda without a GPU" "cuda.*--device cpu" \
    timeout 30 "$dspeed" generate --model "$model" --prompt "The" --device cuda
elif gen gc --model "$model" --prompt "The" --device cuda; then
  if cmp -s "$tmp/gc.txt" "$tmp/g3.txt"; then ok
  else fail "generate on the GPU gives '$(cat "$tmp/gc.txt")', on the CPU '$(cat "$tmp/g3.txt")'"; fi
elif ! grep -q "built without CUDA" "$tmp/gc.err"; then
  fail "generate --device cuda on a GPU machine: $(cat "$tmp/gc.err")"
fi
gen gb --model "$model" --prompt "The" --weights bf16 || fail "generate --weights bf16: $(cat "$tmp/gb.err")"
if [ "$(wc -c < "$tmp/gb.txt")" -le 1 ]; then fail "generate --weights bf16 printed no text"; else ok; fi
expect_error "unknown weight format" "unknown weight format 'fp8'.*fp32.*bf16" \
  timeout 30 "$dspeed" serve --model "$model" --port 0 --weights fp8
expect_error "bf16 weights on a GPU" "bf16 is a CPU option" \
  timeout 30 "$dspeed" generate --model "$model" --prompt "The" --weights bf16 --device cuda
gen gk --model "$model" --prompt "The" --kv-dtype bf16 || fail "generate --kv-dtype bf16: $(cat "$tmp/gk.err")"
if [ "$(wc -c < "$tmp/gk.txt")" -le 1 ]; then fail "generate --kv-dtype bf16 printed no text"; else ok; fi
expect_error "unknown KV dtype" "unknown KV cache dtype 'fp16'.*fp32.*bf16" \
  timeout 30 "$dspeed" serve --model "$model" --port 0 --kv-dtype fp16
expect_error "bf16 KV cache on a GPU" "kv-dtype bf16 is a CPU option" \
  timeout 30 "$dspeed" bench serve --model "$model" --kv-dtype bf16 --device cuda
expect_error "static batch larger than a pass" "static batch of 32 requests.*16 tokens" \
  timeout 30 "$dspeed" serve --model "$model" --port 0 --policy static --static-batch 32 --token-budget 16
expect_error "bad SLA fraction" "SLA fractions must be positive" \
  timeout 30 "$dspeed" bench serve --model "$model" --gen-sla-fraction 0
expect_error "text prompt without tokenizer" "needs a tokenizer" \
  timeout 30 "$dspeed" generate --model "$model" --prompt "The" --tokenizer ""

finish
