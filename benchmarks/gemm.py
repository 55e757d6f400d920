"""Products of many rows on CPU, per kernel family: GFLOP/s of tinygrad's default `x @ w.T`, tfm's packed GEMM
(tfm.runtime.gemm, with the weight's layout computed in the step and with a copy packed beforehand) and numpy's matmul
(OpenBLAS, a stand-in for PyTorch's oneDNN on the same cores), each as a fraction of the machine's measured peak.

    python -m benchmarks gemm                      # ViT-S/16 batch 8 and opus-mt encoder 8 x 128 shapes
    python -m benchmarks gemm --shapes 1576x384x1152 --reps 20

The peak is an FMA loop in registers (12 independent vector accumulators at the machine's width, as the GEMM's tile)
compiled by clang for this CPU and run on every core at once. Each kernel family is a step replayed with its per-core
slices run at once (tfm.runtime.replay); the families are timed in turn, `--reps` rounds, and the best round is
reported (other jobs on a shared machine only ever slow a round down), with the median beside it.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import tempfile
import threading
import time

import numpy as np
from tinygrad import Tensor

from benchmarks.common import load_average, print_rows
from tfm.runtime.gemm import TILE, gemm, gemm_blocks, gemm_layout
from tfm.runtime.machine import cores, vector_floats
from tfm.runtime.replay import CompiledStep

COLUMNS = ["bench", "family", "shape", "best_ms", "median_ms", "gflops", "of_peak", "load"]
SHAPES = "1576x384x1152,1576x384x384,1576x384x1536,1576x1536x384,1024x512x512,1024x512x2048,1024x2048x512"

FMA_LOOP = """
typedef float v __attribute__((vector_size(%(bytes)d)));
void fma_loop(long n, float *out) {
  v a[%(chains)d], x = {0}, y = {0};
  for (int c = 0; c < %(chains)d; c++) { a[c] = x; a[c][0] = c; }
  for (int c = 0; c < %(lanes)d; c++) { x[c] = 0.999f; y[c] = 0.001f; }
  for (long i = 0; i < n; i++)
    for (int c = 0; c < %(chains)d; c++) a[c] = a[c] * x + y;
  for (int c = 0; c < %(chains)d; c++) out[0] += a[c][0];
}
"""


def add_arguments(parser) -> None:
  parser.add_argument("--shapes", default=SHAPES, help=f"rows x in x out, comma-separated (default: {SHAPES})")
  parser.add_argument("--reps", type=int, default=9, help="timed rounds of every family (default: 9)")


def peak_gflops(lanes: int, threads: int, chains: int = TILE, n: int = 20_000_000) -> float:
  """float32 GFLOP/s of `threads` FMA loops at once, each `chains` independent vectors of `lanes` floats."""
  src = FMA_LOOP % {"bytes": 4 * lanes, "chains": chains, "lanes": lanes}
  with tempfile.TemporaryDirectory() as d:
    so = os.path.join(d, "fma.so")
    wide = ["-mprefer-vector-width=512"] if lanes == 16 else []
    subprocess.run(["clang", "-O2", "-march=native", *wide, "-shared", "-fPIC", "-x", "c", "-", "-o", so], input=src.encode(), check=True)
    fma_loop = ctypes.CDLL(so).fma_loop
  fma_loop.argtypes = [ctypes.c_long, ctypes.POINTER(ctypes.c_float)]
  best = 0.0
  for _ in range(3):
    sinks = [ctypes.c_float() for _ in range(threads)]
    workers = [threading.Thread(target=fma_loop, args=(n, ctypes.byref(s))) for s in sinks]
    start = time.perf_counter()
    for w in workers: w.start()
    for w in workers: w.join()
    best = max(best, 2 * lanes * chains * n * threads / (time.perf_counter() - start) / 1e9)
  return best


def _step(fn) -> CompiledStep:
  step = CompiledStep(fn, None, contextlib.nullcontext)
  step(); step()   # captured, then replayed once
  return step


def run(args) -> list[dict]:
  lanes, threads = vector_floats(), cores("CPU")
  peak = peak_gflops(lanes, threads)
  print(f"peak: {peak:.1f} GFLOP/s ({threads} cores x {lanes}-lane FMA loops)", flush=True)
  rows_out: list[dict] = [{"bench": "gemm", "family": "peak (FMA loop)", "shape": f"{threads} cores x {lanes} lanes", "gflops": peak,
                           "of_peak": 1.0, "load": load_average()}]
  rng = np.random.default_rng(0)
  for shape in args.shapes.split(","):
    rows, k, out = (int(v) for v in shape.split("x"))
    xn, wn = rng.standard_normal((rows, k), dtype=np.float32), rng.standard_normal((out, k), dtype=np.float32)
    x, w = Tensor(xn, device="CPU").realize(), Tensor(wn, device="CPU").realize()
    packed = gemm_layout(w, lanes, gemm_blocks(out, lanes, threads)).contiguous().realize()
    y = Tensor.empty(rows, out, device="CPU").realize()
    steps = {"tinygrad x @ w.T": _step(lambda: y.assign(x @ w.T).realize()),
             "tfm gemm (layout in the step)": _step(lambda: y.assign(gemm(x, w)).realize()),
             "tfm gemm (packed copy)": _step(lambda: y.assign(gemm(x, w, packed)).realize())}
    expected = xn.astype(np.float64) @ wn.T.astype(np.float64)
    for name, step in steps.items():
      step()
      if (err := np.abs(y.numpy() - expected).max()) > 1e-3 * k ** 0.5: raise AssertionError(f"{name} {shape}: max error {err}")
    times: dict[str, list[float]] = {name: [] for name in [*steps, "numpy matmul"]}
    for _ in range(args.reps):
      for name, step in steps.items():
        start = time.perf_counter()
        step()
        times[name].append(time.perf_counter() - start)
      start = time.perf_counter()
      np.matmul(xn, wn.T)
      times["numpy matmul"].append(time.perf_counter() - start)
    for name, ts in times.items():
      gflops = 2 * rows * k * out / min(ts) / 1e9
      rows_out.append({"bench": "gemm", "family": name, "shape": shape, "best_ms": 1e3 * min(ts), "median_ms": 1e3 * float(np.median(ts)),
                       "gflops": gflops, "of_peak": gflops / peak, "load": load_average()})
  print_rows(rows_out, COLUMNS)
  return rows_out
