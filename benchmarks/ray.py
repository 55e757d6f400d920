"""Ray: a file of dates through pools of 1, 2, ... actors on a local Ray cluster, against one process on the same file.

    python -m benchmarks ray --backends CPU --lines 4000 --workers 1,2

One process: tfm.apps.textfiles.translate_lines with the bundled model, tinygrad on every core (what `tfm translate
--input` does). Each pool: LinePool with --cpus-per-worker cores per actor (tinygrad's threads follow), started on a
local cluster of the machine's cores (pool start-up: every actor's model loaded; memory: each actor's resident set
after load), a first pass that compiles (or loads from the compiled-program cache) the batch shapes, then --reps timed
passes (the median is reported). Every output is checked against the one process's: `same`.
"""
from __future__ import annotations

import os
import statistics
import time

from benchmarks.common import load_average, print_rows
from tfm.training.tasks import get_task

COLUMNS = ["bench", "backend", "mode", "workers", "cpus_each", "lines", "startup_s", "first_s", "wall_s", "lines_per_s",
           "memory_mb_each", "same", "load"]


def add_arguments(parser) -> None:
  parser.add_argument("--backends", default="CPU", help="the device each actor runs on; the first of a list (default: CPU)")
  parser.add_argument("--lines", type=int, default=4000, help="dates in the file (default: 4000)")
  parser.add_argument("--workers", default="1,2", help="comma-separated pool sizes (default: 1,2)")
  parser.add_argument("--cpus-per-worker", type=int, default=1, help="cores each actor reserves (default: 1)")
  parser.add_argument("--batch-size", type=int, default=32, help="texts per batch (default: 32)")
  parser.add_argument("--reps", type=int, default=2, help="timed passes per case after the first (default: 2)")
  parser.add_argument("--address", default=None, help="a running cluster's address (default: a local one of this machine's cores)")


def _timed(translate, reps: int) -> tuple[float, float, list]:
  """(first pass's seconds, the median of the timed passes', the last results)."""
  walls, results = [], None
  for _ in range(1 + reps):
    start = time.perf_counter()
    results = translate()
    walls.append(time.perf_counter() - start)
  return walls[0], statistics.median(walls[1:]) if reps else walls[0], results


def run(args) -> list[dict]:
  try:
    import ray
  except ImportError:
    print("Ray not installed (pip install -e .[ray]): skipping the ray benchmark")
    return []
  import tfm
  from tfm.apps.cluster import LinePool
  from tfm.apps.textfiles import translate_lines
  device = args.backends.split(",")[0]
  lines = [source for source, _ in get_task("dates").examples(args.lines, "test", seed=7)]
  rows = []
  def row(**values) -> None:
    rows.append({"bench": "ray", "backend": device, "lines": len(lines), "load": load_average(), **values})
    print_rows(rows[-1:], COLUMNS, header=len(rows) == 1)

  start = time.perf_counter()
  translator = tfm.Translator.bundled(device=device)
  startup = time.perf_counter() - start
  first, wall, reference = _timed(lambda: translate_lines(translator, lines, progress=False, max_batch_size=args.batch_size), args.reps)
  texts = [r.translations for r in reference]
  row(mode="one process", workers=0, cpus_each=os.cpu_count(), startup_s=startup, first_s=first, wall_s=wall,
      lines_per_s=len(lines) / wall, same=True)
  ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
  try:
    for workers in (int(w) for w in args.workers.split(",")):
      with LinePool("bundled", workers, device, cpus=args.cpus_per_worker) as pool:
        first, wall, results = _timed(lambda: pool.translate(lines, progress=False, max_batch_size=args.batch_size), args.reps)
        memory = statistics.mean(info["memory_mb"] for info in pool.workers_info)
        row(mode="ray actors", workers=workers, cpus_each=args.cpus_per_worker, startup_s=pool.startup_s, first_s=first,
            wall_s=wall, lines_per_s=len(lines) / wall, memory_mb_each=memory, same=[r.translations for r in results] == texts)
  finally: ray.shutdown()
  return rows
