"""Kernel tuning: BEAM-search the kernels of a model's forward pass once per machine, and reuse them on every later run.

tinygrad stores each BEAM search result in its cache database (~/.cache/tinygrad/cache.db, `CACHEDB=` moves it), but
consults it only while BEAM >= 1 and searches anew on a miss, which takes seconds per kernel. So `tune()` records the
backends it tuned in a marker next to that database, and `tuned_settings(backend)` (what `Transformer.on_device()`
applies) turns BEAM on for a tuned backend in a lookup-only mode: a kernel found in the cache gets its tuned
optimizations, any other kernel (a new shape) the default ones, and nothing is searched at run time.
Set TFM_TUNED=0 to ignore tuned kernels; an explicit BEAM=N in the environment is left as the user set it.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from tinygrad.helpers import BEAM, CACHELEVEL, IGNORE_BEAM_CACHE, NOOPT, ContextVar, diskcache_get, getenv

from tfm.errors import InputError
from tfm.files import write_text
from tfm.model import COMPILE_SETTINGS

MARKER = "tfm-tuned.json"
# set (by tuned_settings) while kernels compile for a tuned backend: BEAM looks up the cache and never searches
LOOKUP_ONLY: ContextVar = ContextVar._cache.get("TFM_BEAM_LOOKUP_ONLY") or ContextVar("TFM_BEAM_LOOKUP_ONLY", 0)


@dataclass
class LookupStats:
  hits: int = 0      # kernels whose tuned optimizations were in the cache
  misses: int = 0    # kernels with no tuned entry: searched, or (lookup-only) given the default optimizations


lookups = LookupStats()


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


_marker_cache: tuple[float, dict] | None = None


def _tuned_backends() -> dict[str, dict]:
  # on_device() asks on every call: re-read the marker only when it changes
  global _marker_cache
  try: mtime = os.stat(marker_path()).st_mtime
  except OSError: return {}
  if _marker_cache is None or _marker_cache[0] != mtime: _marker_cache = (mtime, read_marker())
  return _marker_cache[1]


def tuned_entry(backend: str) -> dict | None:
  """What `tfm tune` recorded for backend (when, at which width), or None: tuning again changes the kernels."""
  return _tuned_backends().get(backend) if tuned_settings(backend) else None


def tuned_settings(backend: str) -> dict[str, int]:
  """tinygrad Context settings that make kernels compiled for `backend` use its tuned BEAM results ({} if none)."""
  if BEAM.value or not getenv("TFM_TUNED", 1) or CACHELEVEL < 1: return {}
  entry = _tuned_backends().get(backend)
  if not entry or not isinstance(entry.get("beam"), int) or entry["beam"] < 1: return {}
  _install_lookup_only()
  return {"BEAM": entry["beam"], "TFM_BEAM_LOOKUP_ONLY": 1}


def _install_lookup_only() -> None:
  """Wrap tinygrad's beam_search (looked up by name each time a kernel is optimized) so that under LOOKUP_ONLY a cache
  miss gets the default optimizations instead of a search. The cache key is the one beam_search itself uses."""
  from tinygrad.codegen.opt import search
  from tinygrad.codegen.opt.heuristic import hand_coded_optimizations
  from tinygrad.uop.ops import Ops
  if getattr(search.beam_search, "lookup_only_aware", False): return
  searching = search.beam_search

  def beam_search(s, rawbufs, var_vals, amt, allow_test_size=True, disable_cache=IGNORE_BEAM_CACHE.value):
    key = {"ast": s.ast.key, "amt": amt, "allow_test_size": allow_test_size, "device": s.ren.target.device,
           "suffix": s.ren.suffix}  # the key beam_search itself stores its result under
    if diskcache_get("beam_search", key) is not None: lookups.hits += 1
    else:
      lookups.misses += 1
      if LOOKUP_ONLY.value:  # what tinygrad does with BEAM=0 (codegen/opt/postrange.apply_opts)
        if NOOPT or any(u.op is Ops.STAGE for u in s.ast.backward_slice): return s
        return hand_coded_optimizations(s)
    return searching(s, rawbufs, var_vals, amt, allow_test_size, disable_cache)
  beam_search.lookup_only_aware = True  # type: ignore[attr-defined]
  search.beam_search = beam_search


def _write_marker(backend: str, entry: dict) -> None:
  data = read_marker()
  data[backend] = entry
  write_text(marker_path(), json.dumps(data, indent=1))


@dataclass
class TuneReport:
  backend: str
  beam: int
  kernels: int           # distinct kernels in the tuned passes
  searched: int          # of those, searched now (the rest were in the cache already)
  seconds: float         # time spent tuning
  before_ms: float       # median forward time with default kernels
  after_ms: float        # median forward time with the tuned kernels, as a later run gets them

  def summary(self) -> str:
    return (f"tuned {self.kernels} kernels on {self.backend} with BEAM={self.beam} ({self.searched} searched now, "
            f"{self.kernels - self.searched} already cached) in {self.seconds:.0f} s\n"
            f"forward: {self.before_ms:.1f} ms before, {self.after_ms:.1f} ms after "
            f"({self.before_ms / self.after_ms:.2f}x faster)\n"
            f"later runs on {self.backend} use these kernels (marker: {marker_path()}; TFM_TUNED=0 turns this off)")


def _kernel_calls(out) -> list:
  """The kernel calls (SINK ASTs) that realizing `out` would run, in order, deduplicated."""
  from tinygrad.uop.ops import Ops
  linear, _ = out.linear_with_vars()
  seen, calls = set(), []
  for call in linear.src:
    if call.op is Ops.CALL and call.src[0].op is Ops.SINK and call.src[0].key not in seen:
      seen.add(call.src[0].key)
      calls.append(call)
  return calls


def tune(model, batch: int = 8, length: int = 64, beam: int = 2, reps: int = 3, progress: bool = True) -> TuneReport:
  """BEAM-search every kernel of `model`'s forward pass at (batch, length) on its backend, time it before and after,
  and mark the backend as tuned so later runs use the results."""
  import statistics

  import numpy as np
  from tinygrad import Context, Device
  from tinygrad.engine.realize import compile_linear
  from tinygrad.helpers import tqdm
  from tinygrad.uop.ops import Ops, UOp

  if isinstance(model.device, tuple):
    raise InputError(f"tfm tune searches one device's kernels: give one backend (e.g. {model.device[0].split(':')[0]}); "
                     f"a model split over several devices compiles with what was tuned for that backend")
  cfg, backend = model.config, model.target or model.device
  rng = np.random.default_rng(0)
  lo = max(cfg.pad_id, cfg.bos_id, cfg.eos_id) + 1
  src, tgt = (model.ids(rng.integers(lo, cfg.vocab_size, (batch, length))) for _ in range(2))
  dev = Device[model.device]

  def forward():
    return model.run_decoder(tgt, model.run_encoder(src), model.padding_mask(src))

  def timed(settings: dict) -> float:
    times = []
    for _ in range(reps + 1):  # the first call compiles
      with model.on_device(), Context(**settings):
        t0 = time.perf_counter()
        forward().realize()
        dev.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) * 1e3

  with model.on_device(), Context(BEAM=0):
    src.realize(), tgt.realize()
  before = timed({"BEAM": 0, "TFM_BEAM_LOOKUP_ONLY": 0})
  with model.on_device(), Context(BEAM=0): calls = _kernel_calls(forward())
  _install_lookup_only()
  start, misses = time.perf_counter(), lookups.misses
  for call in tqdm(calls, desc=f"BEAM={beam} on {backend}", disable=not progress):
    with model.on_device(), Context(BEAM=beam, TFM_BEAM_LOOKUP_ONLY=0): compile_linear(UOp(Ops.LINEAR, src=(call,)), beam=beam)
  searched = lookups.misses - misses
  seconds = time.perf_counter() - start
  _write_marker(backend, {"beam": beam, "config": cfg.to_dict(), "batch": batch, "length": length,
                          "kernels": len(calls), "tuned_at": time.strftime("%Y-%m-%d %H:%M:%S")})
  after = timed(tuned_settings(backend) or {"BEAM": beam})
  return TuneReport(backend, beam, len(calls), searched, seconds, before, after)


COMPILE_SETTINGS.append(tuned_settings)   # every model compiles with its backend's tuned kernels, when it has them
