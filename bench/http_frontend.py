#!/usr/bin/python3
"""The HTTP front end of `dspeed serve` under load, for one or more builds, interleaved round by round.

Per round and build: start `dspeed serve --model M --port 0`, open --streams streaming completions (token-id
prompts, --tokens tokens each, EOS ignored) and --slow clients (half send a header line every second, half stop
in the middle of a body), then time GET /health on a new connection every 25 ms while the streams run; a probe that
gets no answer in 10 s counts as 10 s. Then the slow clients leave, the streams are read to their end, and the
server gets SIGTERM. Last, `dspeed bench serve --clients 16` (SplitFuse) gives requests/s at 16 clients.
Prints the medians over rounds of /health p50/p99/max and of requests/s, per build.

Usage: bench/http_frontend.py --model M.safetensors BUILD_A/dspeed [BUILD_B/dspeed ...] [--rounds 3]
Standard library only.
"""
import argparse
import json
import os
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def start_server(binary, model):
    proc = subprocess.Popen([binary, "serve", "--model", model, "--port", "0", "--tokenizer", "", "--max-queue",
                             "1024"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"at http://127\.0\.0\.1:(\d+)/v1", line)
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"{binary} serve printed no banner")


def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def completion(tokens):
    body = json.dumps({"prompt": [464, 3290, 318, 257], "max_tokens": tokens, "temperature": 0,
                       "ignore_eos": True, "stream": True}).encode()
    return (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def health_seconds(port, limit=10.0):
    t0 = time.perf_counter()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=limit)
        s.settimeout(limit)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
            if time.perf_counter() - t0 > limit:
                break
        s.close()
        if not data.startswith(b"HTTP/1.1 200"):
            return limit
    except OSError:
        return limit
    return min(time.perf_counter() - t0, limit)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def load_round(binary, model, n_streams, n_slow, tokens, probe_s):
    proc, port = start_server(binary, model)
    while health_seconds(port, 2.0) >= 2.0:
        time.sleep(0.1)
    streams = []
    for _ in range(n_streams):
        s = connect(port)
        s.sendall(completion(tokens))
        streams.append(s)
    slow = []
    for i in range(n_slow):
        s = connect(port)
        s.sendall(b"GET /health HTTP/1.1\r\n" if i % 2 == 0 else
                  b"POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"prom")
        slow.append((i % 2 == 0, s))

    done = threading.Event()
    received = {s.fileno(): bytearray() for s in streams}
    finished = []

    def reader():
        sel = selectors.DefaultSelector()
        for s in streams:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        left = len(streams)
        deadline = time.time() + 300
        while left and time.time() < deadline:
            for key, _ in sel.select(timeout=0.1):
                try:
                    chunk = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                if chunk:
                    received[key.fileobj.fileno()] += chunk
                else:
                    sel.unregister(key.fileobj)
                    left -= 1
        finished.append(len(streams) - left)
        done.set()

    def dribble():
        while not done.is_set():
            for dribbling, s in slow:
                if dribbling:
                    try:
                        s.sendall(b"X-Slow: 1\r\n")
                    except OSError:
                        pass
            time.sleep(1.0)

    threading.Thread(target=reader, daemon=True).start()
    threading.Thread(target=dribble, daemon=True).start()
    latencies = []
    t_end = time.time() + probe_s
    while time.time() < t_end and not done.is_set():
        latencies.append(health_seconds(port))
        time.sleep(0.025)
    for _, s in slow:
        s.close()
    done.wait(300)
    complete = sum(1 for b in received.values() if b"data: [DONE]" in b)
    for s in streams:
        s.close()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    return latencies, complete


def serve_bench(binary, model):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "serve.jsonl")
        subprocess.run([binary, "bench", "serve", "--model", model, "--requests", "128", "--clients", "16",
                        "--policies", "splitfuse", "--json", out], check=True, stdout=subprocess.DEVNULL)
        return [json.loads(line)["requests_per_s"] for line in open(out)][0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="+", help="dspeed binaries")
    ap.add_argument("--model", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--slow", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--probe-seconds", type=float, default=4.0)
    a = ap.parse_args()
    res = {b: {"p50": [], "p99": [], "max": [], "complete": [], "rps": []} for b in a.builds}
    for r in range(a.rounds):
        for b in a.builds:
            lat, complete = load_round(b, a.model, a.streams, a.slow, a.tokens, a.probe_seconds)
            res[b]["p50"].append(1e3 * pct(lat, 0.5))
            res[b]["p99"].append(1e3 * pct(lat, 0.99))
            res[b]["max"].append(1e3 * max(lat))
            res[b]["complete"].append(complete)
            res[b]["rps"].append(serve_bench(b, a.model))
            print(f"round {r + 1} {b}: /health p50 {res[b]['p50'][-1]:.1f} ms p99 {res[b]['p99'][-1]:.1f} ms "
                  f"max {res[b]['max'][-1]:.1f} ms over {len(lat)} probes; {complete}/{a.streams} streams "
                  f"complete; {res[b]['rps'][-1]:.1f} req/s at 16 clients", file=sys.stderr, flush=True)
    print(f"{'build':<40}{'/health p50 ms':>16}{'p99 ms':>10}{'max ms':>10}{'req/s@16':>10}")
    for b in a.builds:
        m = {k: statistics.median(v) for k, v in res[b].items()}
        print(f"{b:<40}{m['p50']:>16.1f}{m['p99']:>10.1f}{m['max']:>10.1f}{m['rps']:>10.1f}")


if __name__ == "__main__":
    main()
