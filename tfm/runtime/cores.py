"""A CPU kernel's per-core slices run at once: helper threads beside the calling thread.

tinygrad 0.14 splits a large CPU kernel into per-core slices (its THREAD option: the program takes a core_id), then
calls the slices one after the other on one thread (CPUProgram.__call__), so one CPU device uses one core. The slices
write disjoint parts of the outputs, and a ctypes call releases the GIL, so running them on several threads at once is
the same computation on all the cores. Replayed steps (tfm.runtime.replay) launch through `CORES.run`; every other call
(an eager `model(src, tgt)`, a ViT call, tinygrad's BEAM timings) does once tfm.runtime.patches.cpu_slices_at_once is
installed. TFM_CORES=0 turns both off.
"""
from __future__ import annotations

import ctypes
import queue
import threading

from tinygrad.helpers import NUM_CPU_THREADS

from backends import switches


def core_slot(runtime) -> int | None:
  """Where a CPU program takes its core_id (tinygrad's THREAD option), if it has one."""
  # tinygrad-0.14: CPUProgram.lvp and .runtimevars["core_id"] are internal (THREAD option slices)
  if getattr(runtime, "lvp", True) or not switches.cores(): return None
  return getattr(runtime, "runtimevars", {}).get("core_id")


class Cores:
  """Helper threads that run the slices of one CPU kernel beside the calling thread (module docstring)."""

  def __init__(self, helpers: int):
    self.helpers, self.todo, self.started = helpers, queue.SimpleQueue(), False
    self._starting = threading.Lock()

  def _start(self) -> None:
    with self._starting:
      if self.started: return
      for i in range(self.helpers):
        threading.Thread(target=self._work, name=f"tfm-core{i + 1}", daemon=True).start()
      self.started = True

  def _work(self) -> None:
    while True:
      fxn, args, done = self.todo.get()
      try: fxn(*args)
      except BaseException as e: done.put(e)
      else: done.put(None)

  def run(self, runtime, bufs: list, vals: tuple, slot: int, slices: int) -> None:
    """Run the `slices` slices of a CPU program, its core id in argument `slot`, on this thread and the helpers."""
    def call(core: int) -> list:
      args = [b.va_addr for b in bufs] + list(vals)   # tinygrad-0.14: CPUProgram.fxn takes c_uint64 buffer addresses, then vals
      args[slot] = core
      return [ctypes.c_uint64(x) for x in args]
    if not self.started and self.helpers: self._start()
    done: queue.SimpleQueue = queue.SimpleQueue()
    mine = range(0, slices, self.helpers + 1)
    theirs = [core for core in range(slices) if core % (self.helpers + 1)]
    for core in theirs: self.todo.put((runtime.fxn, call(core), done))
    for core in mine: runtime.fxn(*call(core))
    errors = [e for e in (done.get() for _ in theirs) if e is not None]
    if errors: raise errors[0]


CORES = Cores(max(0, NUM_CPU_THREADS.value - 1))   # tinygrad-0.14: as many slices as its CPU renderer makes (NUM_CPU_THREADS)
