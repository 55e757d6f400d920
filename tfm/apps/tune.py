"""Kernel tuning: BEAM-search the kernels of a model's forward pass and decode steps once per machine; later runs use
them through tfm.runtime.tuned.

Each kernel's search starts from tinygrad's default optimizations, times candidates over buffers holding data and, on
CPU, with a kernel's per-core slices running at once (as replayed decode steps run them), and keeps the searched
kernel only when timed again it beats the default one by KEEP; kernels that take under MIN_SEARCH_MS keep the default
without a search. (tinygrad's own BEAM starts from no optimizations, times untouched buffers and a CPU kernel's slices
one after the other, and on CPU often ends slower than the defaults.)
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field

from tinygrad.helpers import diskcache_put

from tfm.errors import InputError
from tfm.files import write_text
from tfm.generation import forget_sessions, generate
from tfm.runtime import cache
from tfm.runtime.patches import cpu_slices_at_once, default_optimizations, lookups, tuned_lookup
from tfm.runtime.tuned import marker_path, read_marker, suspended, tuned_settings

MARKER = "tfm-tuned.json"
MIN_SEARCH_MS = 0.05   # a kernel faster than this with the default optimizations keeps them: a search would not pay
KEEP = 0.95            # a searched kernel replaces the default one only if it takes at most this share of its time
DECODES = ((1, 1), (4, 8))   # (beam size, batch) of the decodes `tune` tunes: greedy one sentence, beam 4 over 8


def _filled(bufs: list) -> list:
  """The search's buffers, allocated and holding data (a repeated pattern of small floats): untouched pages would
  all read as one zero page, and a kernel bound by memory would time as if its data sat in the cache."""
  import numpy as np
  from tinygrad.device import Buffer
  pattern = (np.random.default_rng(0).random(4096, dtype=np.float32) - 0.5).view(np.uint8)
  # tinygrad-0.14: BEAM times candidates on untouched buffers: filled here through internal Buffer copies
  for b in bufs:
    if b is None: continue
    b.ensure_allocated()
    b.copy_from(Buffer("PYTHON", b.size, b.dtype, opaque=memoryview(bytearray(np.resize(pattern, b.nbytes).tobytes()))))
  return bufs


def _seconds(k, bufs: list, var_vals: dict, reps: int = 5) -> float:
  """The best of `reps` timed runs of kernel k (inf if it does not compile)."""
  import math

  from tinygrad.codegen.opt import search
  # tinygrad-0.14: search._try_compile and _time_program are private (BEAM's own compile and timer)
  compiled = search._try_compile((0, k))[1]
  if compiled is None: return math.inf
  return min(search._time_program(compiled[0], var_vals, bufs, allow_test_size=False, cnt=reps))


def search_from_default(searching, s, rawbufs: list, var_vals: dict, amt: int, key: dict):
  """BEAM-search s from its default optimizations (module docstring); store and return the faster of the two."""
  from tinygrad import Context

  # tinygrad-0.14: its BEAM starts from no optimizations and times slices one after the other: on CPU often slower than its defaults
  best = default = default_optimizations(s)
  if s.ren.target.device.startswith("CPU"): cpu_slices_at_once()   # timed as replayed steps run them: slices at once
  with Context(CACHELEVEL=0):   # candidates' binaries are not worth keeping
    bufs = _filled(rawbufs)
    if _seconds(default, bufs, var_vals) * 1e3 >= MIN_SEARCH_MS:
      lookups.searched += 1
      found = searching(default, bufs, var_vals, amt, allow_test_size=False, disable_cache=True)
      if found.applied_opts != default.applied_opts:
        # timed again, in turns: the VM's timings drift, and the search's own best of 3 favours a lucky candidate
        times = [(_seconds(default, bufs, var_vals), _seconds(found, bufs, var_vals)) for _ in range(3)]
        if min(t for _, t in times) <= KEEP * min(t for t, _ in times):
          best = found
          lookups.improved += 1
  diskcache_put("beam_search", key, best.applied_opts)   # tinygrad-0.14: under beam_search's own cache key
  return best


def write_marker(backend: str, entry: dict) -> None:
  data = read_marker()
  data[backend] = entry
  write_text(marker_path(), json.dumps(data, indent=1))


@dataclass
class TuneReport:
  backend: str
  beam: int
  kernels: int           # distinct kernels met in the tuned forward pass and decodes
  searched: int          # of those, searched now (the rest were in the cache already, or too quick to search)
  improved: int          # of the searched, kernels whose search beat the default optimizations
  seconds: float         # time spent tuning
  before_ms: float       # median forward time with default kernels
  after_ms: float        # median forward time with the tuned kernels, as a later run gets them
  decodes: list = field(default_factory=list)   # (what, ms before, ms after) per tuned decode

  def summary(self) -> str:
    lines = [f"tuned on {self.backend} with BEAM={self.beam} in {self.seconds:.0f} s: {self.kernels} kernels met, "
             f"{self.searched} searched now, {self.improved} of those faster than tinygrad's default",
             f"forward: {self.before_ms:.1f} ms before, {self.after_ms:.1f} ms after ({self.before_ms / self.after_ms:.2f}x faster)"]
    lines += [f"{what}: {b:.1f} ms before, {a:.1f} ms after ({b / a:.2f}x faster)" for what, b, a in self.decodes]
    lines.append(f"later runs on {self.backend} use these kernels (marker: {marker_path()}; TFM_TUNED=0 turns this off)")
    return "\n".join(lines)


@contextlib.contextmanager
def _untuned(model):
  """No tuned settings, no compiled-program cache and no kept decode sessions for `model` while `tune` times and
  searches: every kernel compiles anew (and so passes through the search); afterwards its decodes compile again."""
  forget_sessions(model)
  try:
    with suspended(), cache.paused(): yield
  finally: forget_sessions(model)


def _kernel_calls(out) -> list:
  """The kernel calls (SINK ASTs) that realizing `out` would run, in order, deduplicated."""
  from tinygrad.uop.ops import Ops
  # tinygrad-0.14: Tensor.linear_with_vars and CALL/SINK uops are internal (the kernels a realize runs)
  linear, _ = out.linear_with_vars()
  seen, calls = set(), []
  for call in linear.src:
    if call.op is Ops.CALL and call.src[0].op is Ops.SINK and call.src[0].key not in seen:
      seen.add(call.src[0].key)
      calls.append(call)
  return calls


def tune(model, batch: int = 8, length: int = 64, beam: int = 2, reps: int = 3, progress: bool = True,
         decodes: tuple[tuple[int, int], ...] = DECODES) -> TuneReport:
  """Search the kernels of `model`'s forward pass at (batch, length) and of its decode steps (a decode of `length`
  tokens from `length`-token sources per (beam size, batch) in `decodes`) on its backend, time both before and
  after, and mark the backend as tuned so later runs use the results."""
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
  ids = rng.integers(lo, cfg.vocab_size, (max([batch, *(b for _, b in decodes)]), length))
  ids[:, -1] = cfg.eos_id
  src, tgt = model.ids(ids[:batch]), model.ids(rng.integers(lo, cfg.vocab_size, (batch, length)))
  dev = Device[model.device]

  def forward():
    return model.run_decoder(tgt, model.run_encoder(src), model.padding_mask(src))

  def decode(k: int, b: int):
    return generate(model, ids[:b], beam_size=k, max_len=length, min_len=length)

  def timed(run, settings: dict) -> float:
    times = []
    for _ in range(reps + 1):  # the first call compiles
      with model.on_device(), Context(**settings):
        t0 = time.perf_counter()
        run()
        dev.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) * 1e3

  untuned = {"BEAM": 0, "TFM_BEAM_LOOKUP_ONLY": 0}
  with _untuned(model):
    with model.on_device(), Context(BEAM=0):
      src.realize(), tgt.realize()
    before = timed(lambda: forward().realize(), untuned)
    decodes_before = [timed(lambda: decode(k, b), untuned) for k, b in decodes]
    with model.on_device(), Context(BEAM=0): calls = _kernel_calls(forward())
    tuned_lookup(search_from_default)
    start, misses, searched, improved = time.perf_counter(), lookups.misses, lookups.searched, lookups.improved
    for call in tqdm(calls, desc=f"BEAM={beam} on {backend}: forward", disable=not progress):
      # tinygrad-0.14: engine.realize.compile_linear (internal) compiles one call, searching it under BEAM
      with model.on_device(), Context(BEAM=beam, TFM_BEAM_LOOKUP_ONLY=0): compile_linear(UOp(Ops.LINEAR, src=(call,)), beam=beam)
    forget_sessions(model)   # the decodes timed above keep compiled steps: compile them again, searching
    for k, b in tqdm(decodes, desc=f"BEAM={beam} on {backend}: decodes", disable=not progress or not decodes):
      with Context(BEAM=beam, TFM_BEAM_LOOKUP_ONLY=0): decode(k, b)
    seconds = time.perf_counter() - start
  write_marker(backend, {"beam": beam, "config": cfg.to_dict(), "batch": batch, "length": length,
                          "decodes": [list(d) for d in decodes], "kernels": lookups.misses - misses,
                          "tuned_at": time.strftime("%Y-%m-%d %H:%M:%S")})
  tuned = tuned_settings(backend) or {"BEAM": beam}
  after = timed(lambda: forward().realize(), tuned)
  with _untuned(model): pass   # the decodes compiled while searching are dropped: later ones compile as tuned
  decodes_after = [timed(lambda: decode(k, b), {}) for k, b in decodes]
  what = [f"{'greedy' if k == 1 else f'beam {k}'}, batch {b}: decode of {length} tokens" for k, b in decodes]
  return TuneReport(backend, beam, lookups.misses - misses, lookups.searched - searched, lookups.improved - improved,
                    seconds, before, after, list(zip(what, decodes_before, decodes_after)))
