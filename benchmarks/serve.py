"""Serve: `tfm serve` with the bundled model under load on loopback, with and without dynamic batching.

    python -m benchmarks serve --backends CPU --requests 200 --clients 16

Each mode starts its own `tfm serve` process (port 0, sources up to 32 tokens: every dates text; the first start
compiles the batch shapes, later ones load them from the compiled-program cache), sends --clients requests to settle
it, then --reps times --requests requests, one date each, from --clients threads that each send the next as soon as
theirs is answered. Reported: requests per second (the median of the reps), the median and 99th-percentile latency
(over every timed request), the mean batch the server decoded (from GET /info), and whether every answer was the
same as in the first mode.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import load_average, print_rows
from tfm.training.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["mode", "backend", "requests", "clients", "reps", "rps", "p50_ms", "p99_ms", "mean_batch", "same", "load"]


def add_arguments(parser) -> None:
  parser.add_argument("--backends", default="CPU", help="comma-separated devices for tfm serve (default: CPU)")
  parser.add_argument("--requests", type=int, default=200, help="timed requests per mode (default: 200)")
  parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default: 16)")
  parser.add_argument("--reps", type=int, default=3, help="timed runs of --requests per mode; the median is reported (default: 3)")
  parser.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch with batching (default: 16)")
  parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="the server's --batch-wait-ms (default: 5)")


def _start(device: str, flags: list[str]) -> tuple[subprocess.Popen, int]:
  """A `tfm serve` process and its port, once it says it is ready."""
  proc = subprocess.Popen([sys.executable, "-m", "tfm.cli", "serve", "--device", device, "--port", "0", "--max-src-len", "32",
                           "--quiet", *flags], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
  line = proc.stdout.readline()
  if " ready in " not in line:
    proc.kill()
    raise SystemExit(f"tfm serve {' '.join(flags)} did not start: {line or 'no output'}")
  return proc, int(line.split("http://127.0.0.1:")[1].split()[0])


def _call(port: int, method: str, path: str, body: dict | None = None) -> tuple[float, int, dict]:
  """(seconds, status, JSON answer) of one request on a fresh connection."""
  start = time.perf_counter()
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
  try:
    conn.request(method, path, json.dumps(body) if body is not None else None, {"Content-Type": "application/json"})
    response = conn.getresponse()
    return time.perf_counter() - start, response.status, json.loads(response.read())
  finally: conn.close()


def _load(port: int, texts: list[str], clients: int) -> tuple[float, list[float], list[str]]:
  """Wall seconds, per-request latencies and answers of texts sent from `clients` threads."""
  def one(text: str) -> tuple[float, str]:
    seconds, status, answer = _call(port, "POST", "/translate", {"q": text})
    if status != 200: raise SystemExit(f"tfm serve answered {status}: {answer}")
    return seconds, answer["translatedText"]
  start = time.perf_counter()
  with ThreadPoolExecutor(clients) as pool: results = list(pool.map(one, texts))
  return time.perf_counter() - start, [s for s, _ in results], [a for _, a in results]


def run(args) -> list[dict]:
  texts = [source for source, _ in get_task("dates").examples(args.requests, "test", seed=0)]
  modes = {f"dynamic batching (max {args.max_batch}, {args.batch_wait_ms:g} ms)":
           ["--max-batch", str(args.max_batch), "--batch-wait-ms", str(args.batch_wait_ms)],
           "one text at a time (--no-batching)": ["--no-batching"]}
  rows = []
  for device in args.backends.split(","):
    first = None
    for mode, flags in modes.items():
      proc, port = _start(device, flags)
      try:
        _load(port, texts[:args.clients], args.clients)   # settle: threads, connections, the first batches
        before = _call(port, "GET", "/info")[2]["stats"]
        runs = [_load(port, texts, args.clients) for _ in range(args.reps)]
        after = _call(port, "GET", "/info")[2]["stats"]
      finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
      answers = runs[0][2]
      first = first or answers
      latencies = [s for _, run_latencies, _ in runs for s in run_latencies]
      cuts = statistics.quantiles(latencies, n=100)
      batches = after["batches"] - before["batches"]
      rows.append({"bench": "serve", "mode": mode, "backend": device, "requests": len(texts), "clients": args.clients,
                   "reps": args.reps, "rps": statistics.median(len(texts) / wall for wall, _, _ in runs),
                   "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * cuts[98],
                   "mean_batch": (after["texts"] - before["texts"]) / max(batches, 1),
                   "same": all(run_answers == first for _, _, run_answers in runs),
                   "load": load_average()})
      print(f"{mode} on {device}: {rows[-1]['rps']:.1f} requests/s, p50 {rows[-1]['p50_ms']:.0f} ms, "
            f"p99 {rows[-1]['p99_ms']:.0f} ms, mean batch {rows[-1]['mean_batch']:.1f}", flush=True)
  print_rows(rows, COLUMNS)
  return rows
