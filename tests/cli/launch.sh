#!/usr/bin/env bash
# End-to-end checks of `dspeed launch` with the real mpirun: ranks start and see their rank, a failing rank ends the
# whole job within seconds (not after the other rank's 60 s sleep), SIGTERM to dspeed stops the ranks, and bad input
# gives one "error:" line and a non-zero exit. Usage: launch.sh PATH/TO/dspeed  (exit 77: skipped, no mpirun)
set -u
dspeed="$1"
command -v mpirun > /dev/null || { echo "SKIP: no mpirun on PATH"; exit 77; }
source "$(dirname "$0")/lib.sh"
now() { date +%s.%N; }
running() { local s; s=$(ps -o stat= -p "$1" 2> /dev/null); [ -n "$s" ] && [ "${s#Z}" = "$s" ]; }  # zombies are dead
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# 1. Two ranks, each prints its rank.
out=$("$dspeed" launch -n 2 -- sh -c 'echo rank=$OMPI_COMM_WORLD_RANK' 2> "$tmp/err")
rc=$?
if [ "$rc" -ne 0 ]; then fail "two ranks: exit $rc: $(cat "$tmp/err")"
elif ! printf '%s\n' "$out" | grep -qx 'rank=0' || ! printf '%s\n' "$out" | grep -qx 'rank=1'; then
  fail "two ranks: expected rank=0 and rank=1, got: $out"
else passed=$((passed + 1)); fi

# 2. Failure injection: rank 1 fails at once, rank 0 would sleep 60 s. The launch must end fast, with rank 1's
# exit status and its stderr shown.
start=$(now)
"$dspeed" launch -n 2 -- sh -c 'if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then echo boom >&2; exit 3; fi; sleep 60' \
  > "$tmp/out" 2> "$tmp/err"
rc=$?
t=$(elapsed "$start")
echo "failure injection: dspeed launch exited with status $rc after ${t} s"
if [ "$rc" -eq 0 ]; then fail "failure injection: exit status 0"
elif [ "$rc" -ne 3 ]; then fail "failure injection: expected the rank's status 3, got $rc"
elif ! grep -q boom "$tmp/err"; then fail "failure injection: 'boom' not shown: $(cat "$tmp/err")"
elif awk -v t="$t" 'BEGIN { exit !(t >= 15) }'; then fail "failure injection: took ${t} s (limit 15 s)"
else passed=$((passed + 1)); fi

# 3. SIGTERM to dspeed reaches mpirun, which stops the ranks.
"$dspeed" launch -n 2 -- sh -c 'echo $$ > "$0/pid.$OMPI_COMM_WORLD_RANK"; exec sleep 60' "$tmp" \
  > /dev/null 2>&1 &
launcher=$!
for _ in $(seq 1 100); do [ -s "$tmp/pid.0" ] && [ -s "$tmp/pid.1" ] && break; sleep 0.1; done
start=$(now)
kill -TERM "$launcher"
wait "$launcher"
rc=$?
t=$(elapsed "$start")
sleep 0.5
alive=0
for f in "$tmp"/pid.*; do running "$(cat "$f")" && alive=$((alive + 1)); done
if [ ! -s "$tmp/pid.1" ]; then fail "SIGTERM: ranks never started"
elif [ "$rc" -eq 0 ]; then fail "SIGTERM: exit status 0"
elif [ "$alive" -ne 0 ]; then fail "SIGTERM: $alive rank(s) still running"
elif awk -v t="$t" 'BEGIN { exit !(t >= 15) }'; then fail "SIGTERM: took ${t} s"
else passed=$((passed + 1)); fi
for f in "$tmp"/pid.*; do kill -KILL "$(cat "$f")" 2> /dev/null; done

# 4. A hostfile with include: this machine's slots 1 and 2 of 3 give two ranks and DS_WORLD_INFO says which.
printf '# one machine\nlocalhost slots=3  # all cores\n' > "$tmp/hostfile"
out=$("$dspeed" launch -H "$tmp/hostfile" -e localhost:0 -- sh -c 'echo "$OMPI_COMM_WORLD_SIZE $DS_WORLD_INFO"' \
  2> "$tmp/err")
rc=$?
if [ "$rc" -ne 0 ]; then fail "hostfile + exclude: exit $rc: $(cat "$tmp/err")"
elif [ "$(printf '%s\n' "$out" | grep -cx '2 localhost:1,2')" -ne 2 ]; then fail "hostfile + exclude: got: $out"
else passed=$((passed + 1)); fi

# 5. --dry-run prints the mpirun line and runs nothing.
out=$("$dspeed" launch -n 2 --dry-run -- touch "$tmp/ran" 2> /dev/null)
rc=$?
if [ "$rc" -ne 0 ] || [ -e "$tmp/ran" ] || ! printf '%s' "$out" | grep -q 'mpirun -n 2 .*-- touch'; then
  fail "dry run: exit $rc, output: $out"
else passed=$((passed + 1)); fi

# 6. Bad input: one error line, non-zero exit.
expect_error() {  # name, expected substring, command...
  local name="$1" want="$2"
  shift 2
  local err rc lines
  err=$("$@" 2>&1 > /dev/null)
  rc=$?
  lines=$(printf '%s\n' "$err" | grep -c .)
  if [ "$rc" -eq 0 ]; then fail "$name: exit status 0"
  elif ! printf '%s' "$err" | grep -q '^error: '; then fail "$name: no 'error:' line in: $err"
  elif ! printf '%s' "$err" | grep -qi -- "$want"; then fail "$name: message lacks '$want': $err"
  elif [ "$lines" -ne 1 ]; then fail "$name: expected one line on stderr, got $lines: $err"
  else passed=$((passed + 1)); fi
}
printf 'localhost slots=2\nworker-1 slot=2\n' > "$tmp/bad_hostfile"
printf 'localhost slots=2\nlocalhost slots=1\n' > "$tmp/dup_hostfile"
expect_error "bad hostfile line" "bad_hostfile:2" "$dspeed" launch -H "$tmp/bad_hostfile" -- true
expect_error "duplicate host" "listed again" "$dspeed" launch -H "$tmp/dup_hostfile" -- true
expect_error "missing hostfile" "does not exist" "$dspeed" launch -H "$tmp/no_such_hostfile" -- true
expect_error "unknown include host" "worker-9" "$dspeed" launch -H "$tmp/hostfile" -i worker-9 -- true
expect_error "include and exclude" "cannot be used together" "$dspeed" launch -i localhost -e localhost:0 -- true
expect_error "no mpirun" "apt-get install openmpi-bin" "$dspeed" launch --launcher-path /nonexistent -- true
expect_error "no command" "nothing to launch" "$dspeed" launch -H "$tmp/hostfile"

echo "launch checks: $passed passed, $failures failed"
[ "$failures" -eq 0 ]
