"""What every benchmark shares: the model sizes, the timer, CPU-use accounting, and the PyTorch availability check."""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Callable

from backends.tables import aligned
from tfm.config import PRESETS, TransformerConfig

# The sizes are tfm's presets (tfm.config.PRESETS): "base" is the paper's base model with its 37000-token shared
# vocabulary, whose generator (512 x 37000) is a large share of a forward pass, as in a real translation model;
# "medium" (d=128, 2+2 layers) is the train-step benchmark's; "tiny" is for smoke tests.


def config(name: str) -> TransformerConfig:
  """A benchmark size by preset name; dropout is off so that tfm and PyTorch compute the same numbers."""
  if name not in PRESETS: raise SystemExit(f"unknown --config {name!r}; choose one of {', '.join(PRESETS)}")
  return TransformerConfig.preset(name, dropout=0.0)


def add_common(parser: argparse.ArgumentParser, config: str, batch: int, length: int, reps: int) -> None:
  parser.add_argument("--backends", default="CPU,CL", help="comma-separated tinygrad backends (default: CPU,CL)")
  parser.add_argument("--config", default=config, choices=sorted(PRESETS), help=f"model size, a tfm preset (default: {config})")
  parser.add_argument("--batch", type=int, default=batch, help=f"sequences per batch (default: {batch})")
  parser.add_argument("--length", type=int, default=length, help=f"tokens per source and target sequence (default: {length})")
  parser.add_argument("--reps", type=int, default=reps,
                      help=f"timed repetitions after warm-up; the median is reported (default: {reps})")
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch side even when torch is installed")


def torch_or_none(args):
  """The torch module when it is installed and wanted, else None (the tfm columns are still measured)."""
  if args.no_torch: return None
  try:
    import torch
  except ImportError:
    print("PyTorch not installed (pip install -e .[bench]): timing tfm only")
    return None
  return torch


@dataclass
class Timing:
  first_s: float      # the first call: tracing, scheduling, kernel compilation and one run
  median_s: float     # median of the timed repetitions after warm-up
  cores: float        # CPU seconds / wall seconds over the timed repetitions: the cores actually kept busy
  cpu_s: float        # CPU seconds per repetition (all threads): what a call costs, less sensitive to other load than wall time


def _cpu_seconds() -> float:
  # this process's threads, plus children reaped so far (PoCL and clang run in-process; compiles are before timing)
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def measure(fn: Callable[[], object], reps: int, warmup: int = 1) -> Timing:
  """Time fn: its first call separately, then `warmup` untimed calls, then the median of `reps` calls."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  for _ in range(warmup): fn()
  times, cpu0, wall0 = [], _cpu_seconds(), time.perf_counter()
  for _ in range(max(1, reps)):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
  return Timing(first, statistics.median(times), cpu / wall if wall > 0 else 0.0, cpu / len(times))


def timed_torch(torch, forward: Callable, threads: int, reps: int, base: dict) -> dict:
  """One PyTorch eager row: forward() timed with `threads` intra-op threads (restored after), and its output as
  numpy under "logits" (the cores it kept busy are in "cores")."""
  default = torch.get_num_threads()
  torch.set_num_threads(threads)
  try:
    load = load_average()
    timing = measure(forward, reps, warmup=1)
    logits = forward().numpy()
  finally: torch.set_num_threads(default)
  return {**base, "backend": f"torch {threads}T", "mode": "eager", "first_s": timing.first_s, "median_ms": timing.median_s * 1e3,
          "cpu_ms": timing.cpu_s * 1e3, "cores": timing.cores, "load": load, "logits": logits}


def torch_thread_counts(torch) -> list[int]:
  """PyTorch's default thread count, and 1: on a loaded machine its OpenMP threads can wait on each other for longer
  than one thread takes, so both are timed and tfm is compared with the faster."""
  return sorted({torch.get_num_threads(), 1}, reverse=True)


def load_average() -> float:
  """1-minute load average: other processes on this machine compete for the same cores during a measurement."""
  return os.getloadavg()[0]


def ratio(ours: float | None, theirs: float | None) -> float | None:
  return None if not ours or not theirs else ours / theirs


def print_rows(rows: list[dict], columns: list[str], header: bool = True) -> None:
  """A plain aligned table of the given columns (missing values as '-')."""
  def cell(v) -> str:
    if v is None: return "-"
    if isinstance(v, float): return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)
  table = aligned([columns] + [[cell(r.get(c)) for c in columns] for r in rows], sep="  ", right=True).splitlines()
  print("\n".join(table[0 if header else 1:]), flush=True)
