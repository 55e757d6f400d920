"""File translation: `tfm translate --input FILE --output FILE` on N dates (the bundled model), sentences per second.

Each run is a fresh process, as a user runs the command; the first run per backend and batch size fills the
compiled-program cache (its wall time is reported as first_s), the next ones are timed (the median of --reps).
The input is the dates task's held-out examples, so the output is checked too: exact match against the targets.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import load_average, print_rows
from tfm.training.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["bench", "backend", "lines", "batch", "first_s", "wall_s", "lines_per_s", "exact_match", "load"]


def add_arguments(parser) -> None:
  parser.add_argument("--backends", default="CPU,CL", help="comma-separated devices (default: CPU,CL)")
  parser.add_argument("--lines", type=int, default=10000, help="dates in the input file (default: 10000)")
  parser.add_argument("--batch-size", default="32,128", help="comma-separated --batch-size values (default: 32,128)")
  parser.add_argument("--reps", type=int, default=2, help="timed runs per case, after the first (default: 2)")


def run(args) -> list[dict]:
  pairs = get_task("dates").examples(args.lines, "test", seed=7)
  rows = []
  with tempfile.TemporaryDirectory(prefix="tfm-file-bench-") as tmp:
    source, out = Path(tmp) / "dates.txt", Path(tmp) / "iso.txt"
    source.write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    for backend in args.backends.split(","):
      for batch in (int(b) for b in args.batch_size.split(",")):
        command = [sys.executable, "-m", "tfm.cli", "translate", "--device", backend, "--input", str(source),
                   "--output", str(out), "--batch-size", str(batch), "--no-progress"]
        walls = []
        for _ in range(1 + args.reps):
          start = time.perf_counter()
          proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=3600)
          walls.append(time.perf_counter() - start)
          if proc.returncode != 0: raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-2000:]}")
        got = out.read_text(encoding="utf-8").split("\n")[:-1]
        exact = sum(g == t for g, (_, t) in zip(got, pairs, strict=True)) / len(pairs)
        wall = statistics.median(walls[1:]) if args.reps else walls[0]
        rows.append({"bench": "file", "backend": backend, "lines": len(pairs), "batch": batch, "first_s": walls[0],
                     "wall_s": wall, "lines_per_s": len(pairs) / wall, "exact_match": exact, "load": load_average()})
        print_rows(rows[-1:], COLUMNS, header=len(rows) == 1)
  return rows
