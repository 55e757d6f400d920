"""Load-memory benchmark: the peak resident memory `tfm.load` adds while loading a saved model, as a multiple of the
model's weight bytes (each measured in a fresh process, so nothing else the benchmark did is counted). Linux only:
it reads the process's memory from /proc.

    python -m benchmarks memory --backends CPU --config base
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from benchmarks.common import config, load_average, print_rows

COLUMNS = ["bench", "config", "backend", "weights_mb", "peak_mb", "peak_ratio", "load_s", "load"]

# runs in a fresh interpreter: RSS before loading (imports and the device already up), then the peak during the load.
# The peak is the kernel's high-water mark of this process's memory, reset just before the load (clear_refs 5):
# getrusage's ru_maxrss would not do, since a child inherits its parent's maximum across fork and exec, and the
# parent here has just built and saved the model.
PROBE = """
import json, sys, time
import numpy as np
import tfm
from tinygrad import Tensor
def status_mb(field):
  with open("/proc/self/status") as f: return next(int(l.split()[1]) for l in f if l.startswith(field + ":")) / 1024
Tensor(np.zeros(4, np.float32), device=sys.argv[2]).realize()
with open("/proc/self/clear_refs", "w") as f: f.write("5")
before = status_mb("VmRSS")
t0 = time.perf_counter()
model = tfm.load(sys.argv[1], device=sys.argv[2])
seconds = time.perf_counter() - t0
peak = status_mb("VmHWM")
weights = sum(p.nbytes() for p in model.parameters()) / 2**20
print(json.dumps({"before_mb": before, "peak_mb": peak - before, "weights_mb": weights, "load_s": seconds}))
"""


def add_arguments(parser) -> None:
  parser.add_argument("--backends", default="CPU,CL", help="comma-separated tinygrad backends (default: CPU,CL)")
  parser.add_argument("--config", default="base", help="model size to save and load (default: base)")


def run(args) -> list[dict]:
  import tfm
  cfg = config(args.config)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "model.safetensors")
    tfm.save(tfm.Transformer(cfg, device="CPU"), path)
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
      load = load_average()
      out = subprocess.run([sys.executable, "-c", PROBE, path, backend], capture_output=True, text=True, check=True)
      m = json.loads(out.stdout.strip().splitlines()[-1])
      rows.append({"bench": "memory", "config": args.config, "backend": backend, "weights_mb": m["weights_mb"],
                   "peak_mb": m["peak_mb"], "peak_ratio": m["peak_mb"] / m["weights_mb"], "load_s": m["load_s"], "load": load})
  print("peak_mb = peak resident memory during tfm.load minus the resident memory before it")
  print_rows(rows, COLUMNS)
  return rows
