"""Tuned kernels at run time: which backends `tfm tune` has tuned here, and the tinygrad settings that make a model's
kernels use what it found (tfm.apps.tune is the search itself).

tinygrad stores each BEAM search result in its cache database (~/.cache/tinygrad/cache.db, `CACHEDB=` moves it), but
consults it only while BEAM >= 1 and searches anew on a miss, which takes seconds per kernel. So `tfm tune` records the
backends it tuned in a marker next to that database, and `tuned_settings(backend)` (applied by `compiling_on`, so by
every model's on_device()) turns BEAM on for a tuned backend in a lookup-only mode (tfm.runtime.patches.tuned_lookup):
a kernel found in the cache gets its tuned optimizations, any other kernel (a new shape) the default ones, and nothing
is searched at run time. TFM_TUNED=0 ignores tuned kernels; an explicit BEAM=N in the environment is left as set.
"""
from __future__ import annotations

import contextlib
import json
import os

from tinygrad import Context
from tinygrad.helpers import BEAM, CACHELEVEL

from backends import switches
from tfm.runtime.patches import cpu_slices_at_once, tuned_lookup

MARKER = "tfm-tuned.json"


def marker_path() -> str:
  """The marker lives beside tinygrad's cache database, so moving the database (CACHEDB=) moves the marker with it."""
  from tinygrad.helpers import CACHEDB
  return os.path.join(os.path.dirname(CACHEDB), MARKER)


def read_marker() -> dict[str, dict]:
  """{backend: {"beam": N, ...}} for every backend `tfm tune` has tuned here; {} when none has been."""
  try:
    with open(marker_path(), encoding="utf-8") as f: data = json.load(f)
  except (FileNotFoundError, json.JSONDecodeError): return {}
  return data if isinstance(data, dict) else {}


_marker_cache: list = [None, {}]   # [mtime, contents]


def _tuned_backends() -> dict[str, dict]:
  # on_device() asks on every call: re-read the marker only when it changes
  try: mtime = os.stat(marker_path()).st_mtime
  except OSError: return {}
  if _marker_cache[0] != mtime: _marker_cache[:] = [mtime, read_marker()]
  return _marker_cache[1]


_suspended = [0]   # blocks of `suspended()` open in this process


@contextlib.contextmanager
def suspended():
  """No tuned settings apply in this process during the block (`tfm tune` times the default kernels and searches)."""
  _suspended[0] += 1
  try: yield
  finally: _suspended[0] -= 1


def tuned_settings(backend: str) -> dict[str, int]:
  """tinygrad Context settings that make kernels compiled for `backend` use its tuned BEAM results ({} if none)."""
  if _suspended[0] or BEAM.value or not switches.tuned() or CACHELEVEL < 1: return {}
  entry = _tuned_backends().get(backend)
  if not entry or not isinstance(entry.get("beam"), int) or entry["beam"] < 1: return {}
  tuned_lookup()
  # tinygrad-0.14: BEAM's cache is read only while BEAM >= 1: BEAM on, with patches.tuned_lookup's lookup-only mode
  return {"BEAM": entry["beam"], "TFM_BEAM_LOOKUP_ONLY": 1}


def tuned_entry(backend: str) -> dict | None:
  """What `tfm tune` recorded for backend (when, at which width), or None: tuning again changes the kernels."""
  return _tuned_backends().get(backend) if tuned_settings(backend) else None


def compiling_on(device, target: str | None) -> contextlib.AbstractContextManager:
  """The block in which a model's kernels are built and compiled: tinygrad picks the renderer ("CPU:LLVM" rather than
  clang) from DEV when it compiles, so realize under this to get the backend that was asked for; the kernels
  `tfm tune` stored for this backend apply too; on CPU, a kernel's per-core slices run at once (patches.cpu_slices_at_once)."""
  if any(str(d).startswith("CPU") for d in (device if isinstance(device, tuple) else (device,))): cpu_slices_at_once()
  settings = {"DEV": target} if target else {}   # tinygrad-0.14: the renderer is picked from DEV when kernels compile
  settings.update(tuned_settings(target or device))
  return Context(**settings) if settings else contextlib.nullcontext()
