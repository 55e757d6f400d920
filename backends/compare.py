"""Run one computation on several backends, diff its results against a reference, and time it. Knows devices only.

    runs = compare(build, backends.available(), expected=oracle, tolerance=1e-4, reference="CPU", graph=kernels_fn)

`build(info)` is called once per backend that runs here, under `use(info)`; it puts what it needs on the device
(weights, inputs) and returns named steps, each a callable that returns named numpy arrays. Each step is called
1 + `repeat` times under `use(info)`: the first call's time includes compiling its kernels (tinygrad compiles each new
kernel on first use), the others give the median latency. The first call's outputs are the ones checked:
- float outputs against `expected` (max abs error, within `tolerance` to pass) and against the reference backend's;
- integer outputs (token ids, classes) against `expected`'s when it has them (the oracle's own decoding), else against
  the reference backend's: they pass when identical, or when `judge(key, ids)` explains the difference as a near tie
  (it returns the description shown in the note; None: not a tie, the run fails).
A backend that cannot run is reported, never passed. Compile-only backends are compile-checked when `graph` is given:
its kernels are rendered in the backend's language and, for CUDA, compiled to PTX with NVRTC; unavailable ones keep
the probe's reason. A dtype the device does not support (float16 on an OpenCL device without cl_khr_fp16) is
"unsupported", decided from what the device advertises before anything runs (cl_khr_fp16, WebGPU's shader-f16).
"""
from __future__ import annotations
import math, statistics, time, traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
import numpy as np
from tinygrad import Context, Device, Tensor
from tinygrad.helpers import tqdm
from backends import kernels
from backends.registry import COMPILE_ONLY, RUNS, BackendInfo, lookup
from backends.select import use

PASS, FAIL, ERROR = "pass", "FAIL", "error"
UNSUPPORTED, SKIPPED, UNAVAILABLE = "unsupported", "skipped", "unavailable"
COMPILE_CHECKED, COMPILE_FAILED = "compile-checked", "compile failed"
FAILING = (FAIL, ERROR, COMPILE_FAILED)   # the statuses that make a comparison fail
KERNEL_LANGUAGE = {"CUDA": "cuda", "NV": "cuda", "CUDA:PTX": "ptx"}   # backends.kernels language of each GPU backend

Outputs = Mapping[str, np.ndarray]
Steps = Mapping[str, Callable[[], Outputs]]
Graph = Callable[[], "Tensor | tuple[Tensor, ...]"]


@dataclass(frozen=True)
class Timing:
  """One step's wall-clock times: the first call (compiles its kernels) and the warm calls after it."""
  first_s: float
  times_s: tuple[float, ...]

  @property
  def median_s(self) -> float | None: return statistics.median(self.times_s) if self.times_s else None


@dataclass
class Run:
  """What one backend did: its status, outputs, timings and its differences from the expected and reference results."""
  backend: BackendInfo
  status: str
  note: str = ""
  outputs: dict[str, np.ndarray] = field(default_factory=dict)
  timings: dict[str, Timing] = field(default_factory=dict)
  setup_s: float | None = None
  vs_expected: dict[str, float] = field(default_factory=dict)    # float output -> max abs error vs expected
  vs_reference: dict[str, float] = field(default_factory=dict)   # float output -> max abs difference vs the reference
  identical: dict[str, bool] = field(default_factory=dict)       # integer output -> equal to the oracle's (or reference's)
  ties: dict[str, str] = field(default_factory=dict)             # integer output that differs only at a near tie -> where
  is_reference: bool = False
  detail: str = ""     # the traceback of an error

  @property
  def ran(self) -> bool: return self.status in (PASS, FAIL)

  @property
  def max_error(self) -> float | None: return _worst(self.vs_expected)

  @property
  def max_vs_reference(self) -> float | None: return _worst(self.vs_reference)

  @property
  def all_identical(self) -> bool | None: return all(self.identical.values()) if self.identical else None

  @property
  def first_s(self) -> float | None: return sum(t.first_s for t in self.timings.values()) if self.timings else None

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready: floats that are not finite become the strings "nan"/"inf"; outputs are left out."""
    return {"backend": self.backend.label, "target": self.backend.target, "device": self.backend.device,
            "status": self.status, "note": self.note, "reference": self.is_reference,
            "max_abs_error": {k: _json_float(v) for k, v in self.vs_expected.items()},
            "vs_reference": {k: _json_float(v) for k, v in self.vs_reference.items()},
            "identical": dict(self.identical), "ties": dict(self.ties), "setup_s": self.setup_s, "detail": self.detail,
            "timings": {k: {"first_s": t.first_s, "median_s": t.median_s, "times_s": list(t.times_s)} for k, t in self.timings.items()}}


def _worst(diffs: Mapping[str, float]) -> float | None:
  if not diffs: return None
  return max(diffs.values(), key=lambda d: math.inf if math.isnan(d) else d)   # NaN is the worst difference there is


def _json_float(x: float) -> float | str: return x if math.isfinite(x) else str(x)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
  """max |a - b| in float64; inf when the shapes differ, NaN when either has a NaN."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape: return math.inf
  return float(np.abs(a - b).max(initial=0.0)) if not (np.isnan(a).any() or np.isnan(b).any()) else math.nan


def dtype_unsupported(info: BackendInfo, dtype: str) -> str | None:
  """Why `info`'s device cannot compute in `dtype` (from what it advertises); None when nothing says it cannot."""
  if dtype == "float16" and info.device_name == "CL":
    with use(info): extensions = Device["CL"].device_exts
    if "cl_khr_fp16" not in extensions: return f"the OpenCL device ({info.device or 'CL'}) does not advertise cl_khr_fp16"
  if dtype == "float16" and info.device_name == "WEBGPU":
    with use(info): arch = Device["WEBGPU"].arch   # tinygrad's WEBGPU device asks for shader-f16 when the adapter has it
    if "shader-f16" not in (arch or ""): return f"the WebGPU adapter ({info.device or 'WEBGPU'}) does not advertise shader-f16"
  return None


def compile_check(info: BackendInfo, graph: Graph) -> str:
  """Compile `graph`'s kernels for a backend without its hardware; returns what was checked, raises if it fails."""
  target = lookup(info.name).compile_target
  arch = target.split(":")[2] if target and target.count(":") >= 2 else None
  if (language := KERNEL_LANGUAGE.get(info.name)) is not None:
    rendered = kernels.render(graph, language, arch)
    # PTX is what tinygrad compiles to for CUDA:PTX; the driver assembles it when it loads a kernel
    if language != "cuda": return f"{len(rendered)} kernels compiled to PTX for {arch} (the driver assembles PTX at load)"
    compiled = kernels.compile_cuda(rendered, arch or "sm_80")
    return f"{len(compiled)} kernels rendered as CUDA C, compiled to PTX for {arch} by NVRTC {'.'.join(map(str, kernels.nvrtc_version()))}"
  if target is None: raise ValueError(f"{info.name} has no compile-only target")
  # the NULL device with the backend's renderer compiles each kernel with the backend's own compiler and runs nothing
  with Context(DEV=target):
    out = graph()
    Tensor.realize(*(out if isinstance(out, (tuple, list)) else (out,)))
  return f"kernels compiled for {target}"


def _first_line(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def _run(info: BackendInfo, build: Callable[[BackendInfo], Steps], repeat: int) -> Run:
  run = Run(info, PASS)
  try:
    with use(info):
      start = time.perf_counter()
      steps = build(info)
      run.setup_s = time.perf_counter() - start
      for name, step in steps.items():
        times = []
        for i in range(1 + repeat):
          start = time.perf_counter()
          outputs = step()
          times.append(time.perf_counter() - start)
          if i == 0: run.outputs.update({k: np.asarray(v) for k, v in outputs.items()})
        run.timings[name] = Timing(times[0], tuple(times[1:]))
  except Exception as e:   # any failure on one backend is that backend's result, not the end of the comparison
    run.status, run.note, run.detail = ERROR, _first_line(e), traceback.format_exc()
    run.outputs, run.timings = {}, {}
  return run


Judge = Callable[[str, np.ndarray], "str | None"]


def _check(run: Run, reference: Run | None, expected: Outputs, tolerance: float, judge: Judge | None) -> None:
  """Fill in the differences and decide pass or FAIL."""
  def same(a: np.ndarray, b: np.ndarray) -> bool: return a.shape == b.shape and bool(np.array_equal(a, b))
  for key, value in run.outputs.items():
    if value.dtype.kind == "f":
      if key in expected: run.vs_expected[key] = max_abs_diff(value, expected[key])
      if reference is not None and key in reference.outputs: run.vs_reference[key] = max_abs_diff(value, reference.outputs[key])
    elif key in expected:
      run.identical[key] = same(value, expected[key])
      if not run.identical[key] and judge is not None and (tie := judge(key, value)) is not None: run.ties[key] = tie
    elif reference is not None and key in reference.outputs: run.identical[key] = same(value, reference.outputs[key])
  problems = [f"{k} off by {v:.3g} > {tolerance:g}" for k, v in run.vs_expected.items() if not v <= tolerance]
  problems += [f"{k} differs from {'the oracle' if k in expected else reference.backend.label}'s" for k, ok in run.identical.items()
               if not ok and k not in run.ties]
  if problems: run.status, run.note = FAIL, "; ".join(problems)
  elif run.ties: run.note = "; ".join(f"{k}: {tie}" for k, tie in run.ties.items())


def compare(build: Callable[[BackendInfo], Steps], infos: Sequence[BackendInfo], *, expected: Outputs | None = None,
            tolerance: float = 0.0, reference: str | None = None, repeat: int = 3, dtype: str = "float32",
            graph: Graph | None = None, skip: Mapping[str, str] | None = None, progress: bool | None = None,
            judge: Judge | None = None) -> list[Run]:
  """One Run per backend in `infos`, in order (see the module doc).

  reference: the backend whose outputs the others must reproduce; the first that ran when it is None or did not run
  (the reference Run has is_reference set). skip: backend name -> why it is left out. judge: see the module doc.
  progress: a progress line on stderr (None: when stderr is a terminal).
  """
  if repeat < 0: raise ValueError(f"repeat={repeat} must be >= 0 (the warm calls timed after the first)")
  skip = {lookup(k).name: v for k, v in (skip or {}).items()}
  runs: list[Run] = []
  bar = tqdm(infos, desc="compare", disable=None if progress is None else not progress, unit="backend")
  for info in bar:
    bar.set_description(f"{info.label}: compiling and running" if info.runs else f"{info.label}: checking")
    if info.name in skip: runs.append(Run(info, SKIPPED, skip[info.name]))
    elif info.status == RUNS:
      why = dtype_unsupported(info, dtype)
      runs.append(Run(info, UNSUPPORTED, f"{dtype}: {why}") if why else _run(info, build, repeat))
    elif info.status == COMPILE_ONLY and graph is not None:
      try: runs.append(Run(info, COMPILE_CHECKED, f"{compile_check(info, graph)}; cannot run here: {info.reason}"))
      except kernels.NVRTCNotFound as e: runs.append(Run(info, UNAVAILABLE, f"{info.reason}; kernels not compiled: {e}"))
      except Exception as e: runs.append(Run(info, COMPILE_FAILED, _first_line(e), detail=traceback.format_exc()))
    else: runs.append(Run(info, UNAVAILABLE, info.reason))
  ran = [r for r in runs if r.ran]
  named = [r for r in ran if reference and r.backend.label == lookup(reference).name]
  ref = (named or ran or [None])[0]
  if ref is not None: ref.is_reference = True
  for run in ran: _check(run, ref if run is not ref else None, expected or {}, tolerance, judge)
  return runs


def failed(runs: Sequence[Run]) -> list[Run]:
  """The runs that make the comparison fail: out of tolerance, different outputs, an error, a failed compile."""
  return [r for r in runs if r.status in FAILING]
