"""Every change tfm makes to tinygrad's own behaviour, in one place: each function patches one thing, says why, and can
be undone. Upgrading tinygrad starts here (and at the `tinygrad-0.14:` tags docs/ARCHITECTURE.md lists).

- `share_tinygrad_cache_across_threads()`: tinygrad's disk cache (compiled binaries, tuned kernels: CACHEDB) is used
  from every thread that compiles, but tinygrad 0.14 opens one SQLite connection for the process, which SQLite refuses
  to use from any other thread than the one that opened it. Run when tfm is imported: each thread gets its own.
- `tuned_lookup(on_miss)`: tinygrad's BEAM either finds a kernel's tuned optimizations in its cache or searches anew
  (seconds per kernel). Wrapped, a miss under LOOKUP_ONLY gets tinygrad's default optimizations instead, and any other
  miss goes to `on_miss` (`tfm tune`'s search from the defaults). tfm.runtime.tuned turns it on for tuned backends.
- `cpu_slices_at_once()`: tinygrad 0.14 runs a CPU kernel's per-core slices one after the other on one thread;
  patched, they run on the machine's cores at once (tfm.runtime.cores), in an eager call as in a replayed step. Turned
  on by the first model compiled for CPU (tfm.runtime.tuned.compiling_on) and by `tfm tune`'s timings; TFM_CORES=0
  leaves tinygrad's way.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from tinygrad.helpers import IGNORE_BEAM_CACHE, NOOPT, ContextVar, diskcache_get

from backends import switches
from tfm.runtime.cores import CORES, core_slot

# set (tfm.runtime.tuned) while kernels compile for a tuned backend: BEAM looks up the cache and never searches.
# tinygrad-0.14: a ContextVar is registered once per name; a second module load must reuse it
LOOKUP_ONLY: ContextVar = ContextVar._cache.get("TFM_BEAM_LOOKUP_ONLY") or ContextVar("TFM_BEAM_LOOKUP_ONLY", 0)

_connections = threading.local()


def share_tinygrad_cache_across_threads() -> None:
  """Make tinygrad's disk cache open one SQLite connection per thread (SQLite's rule) instead of one per process, so
  that a model built in one thread compiles kernels in another (a web server's worker). Same database, same
  settings as tinygrad's own connection (WAL journal: readers and one writer at a time, across threads and processes)."""
  import sqlite3

  from tinygrad import helpers
  if getattr(helpers.db_connection, "per_thread", False): return

  # tinygrad-0.14: helpers.db_connection opens one connection per process (check_same_thread)
  def db_connection() -> sqlite3.Connection:
    conn = getattr(_connections, "conn", None)
    if conn is None or getattr(_connections, "path", None) != helpers.CACHEDB:
      os.makedirs(os.path.dirname(helpers.CACHEDB), exist_ok=True)
      conn = sqlite3.connect(helpers.CACHEDB, timeout=60, isolation_level="IMMEDIATE")
      try: conn.execute("PRAGMA journal_mode=WAL").fetchone()
      except sqlite3.OperationalError: pass   # another connection is setting it
      conn.execute("PRAGMA synchronous=NORMAL")
      _connections.conn, _connections.path = conn, helpers.CACHEDB
    return conn
  db_connection.per_thread = True  # type: ignore[attr-defined]
  helpers.db_connection = db_connection


@dataclass
class LookupStats:
  hits: int = 0      # kernels whose tuned optimizations were in the cache
  misses: int = 0    # kernels with no tuned entry: searched, or (lookup-only) given the default optimizations
  searched: int = 0  # of the misses, kernels searched (the others were too quick to pay for a search)
  improved: int = 0  # of those, kernels whose searched optimizations beat the default ones


lookups = LookupStats()
_original: list = []   # tinygrad's beam_search, while the wrapper is installed


def default_optimizations(s):
  """The kernel with tinygrad's default optimizations, as BEAM=0 gets them (codegen/opt/postrange.apply_opts)."""
  from tinygrad.codegen.opt.heuristic import hand_coded_optimizations
  from tinygrad.uop.ops import Ops
  # tinygrad-0.14: mirrors codegen/opt/postrange.apply_opts without BEAM (hand_coded_optimizations unless NOOPT or STAGE)
  if NOOPT or any(u.op is Ops.STAGE for u in s.ast.backward_slice): return s
  return hand_coded_optimizations(s.copy())


def tuned_lookup(on_miss: Callable | None = None) -> None:
  """Wrap tinygrad's beam_search (looked up by name each time a kernel is optimized): a cache hit applies the stored
  optimizations; a miss gets the default ones under LOOKUP_ONLY, else `on_miss(beam_search, s, rawbufs, var_vals, amt,
  key)` (given here or by an earlier call; without one, tinygrad's own search). The cache key is beam_search's own."""
  from tinygrad.codegen.opt import search
  if _original:
    if on_miss is not None: search.beam_search.on_miss = on_miss
    return
  searching = search.beam_search
  _original.append(searching)

  # tinygrad-0.14: beam_search has no lookup-only mode and always searches on a cache miss
  def beam_search(s, rawbufs, var_vals, amt, allow_test_size=True, disable_cache=None):
    # tinygrad-0.14: beam_search's default binds IGNORE_BEAM_CACHE at import; read per call here
    if disable_cache is None: disable_cache = IGNORE_BEAM_CACHE.value   # read per call: Context(IGNORE_BEAM_CACHE=1) counts
    key = {"ast": s.ast.key, "amt": amt, "allow_test_size": allow_test_size, "device": s.ren.target.device,
           "suffix": s.ren.suffix}  # tinygrad-0.14: the key beam_search itself stores its result under
    if not disable_cache and diskcache_get("beam_search", key) is not None:
      lookups.hits += 1
      return searching(s, rawbufs, var_vals, amt, allow_test_size, disable_cache)
    lookups.misses += 1
    if LOOKUP_ONLY.value: return default_optimizations(s)
    if beam_search.on_miss is None: return searching(s, rawbufs, var_vals, amt, allow_test_size, disable_cache)
    return beam_search.on_miss(searching, s, rawbufs, var_vals, amt, key)
  beam_search.on_miss = on_miss  # type: ignore[attr-defined]
  search.beam_search = beam_search


def restore_beam_search() -> None:
  """Undo `tuned_lookup`: tinygrad's own beam_search again (tests that install the wrapper call this after)."""
  from tinygrad.codegen.opt import search
  if _original: search.beam_search = _original.pop()


_plain_call: list = []   # tinygrad's CPUProgram.__call__, while cpu_slices_at_once is installed


def cpu_slices_at_once() -> bool:
  """Make every CPU kernel split into per-core slices run them on the machine's cores at once (tfm.runtime.cores)
  wherever it is called from; False where TFM_CORES=0 leaves tinygrad's way. Idempotent."""
  if _plain_call: return True
  if not switches.cores(): return False
  from tinygrad.runtime.ops_cpu import CPUProgram
  plain = CPUProgram.__call__

  # tinygrad-0.14: CPUProgram.__call__ runs a kernel's THREAD slices one after the other on the calling thread
  def call(self, *bufs, global_size=(1, 1, 1), local_size=(1, 1, 1), vals=(), wait=False, timeout=None):
    if global_size[0] < 2 or (slot := core_slot(self)) is None:
      return plain(self, *bufs, global_size=global_size, local_size=local_size, vals=vals, wait=wait, timeout=timeout)
    start = time.perf_counter()
    CORES.run(self, list(bufs), tuple(vals), slot, global_size[0])
    return time.perf_counter() - start if wait else None
  _plain_call.append(plain)
  CPUProgram.__call__ = call   # type: ignore[method-assign]
  return True


def restore_cpu_slices() -> None:
  """Undo `cpu_slices_at_once`: tinygrad's own CPUProgram.__call__ again."""
  from tinygrad.runtime.ops_cpu import CPUProgram
  if _plain_call: CPUProgram.__call__ = _plain_call.pop()   # type: ignore[method-assign]
