"""Choose the backend to run on: an explicit name, a priority list, or "auto".

Precedence: an explicit name or list > $TFM_DEVICE (it replaces "auto", and only "auto") > the auto order.
An explicit name probes only that backend; a list probes its members; auto probes everything, in parallel.

Auto order, fixed (not benchmarked per run): accelerators METAL, CUDA, NV, AMD; then CL, CPU, CPU:LLVM, CPU:X86, PYTHON.
CL comes first after the accelerators: a GPU OpenCL device is an accelerator, and a CPU one (PoCL) was the fastest
CPU-class backend measured, since it runs work-groups on every core where tinygrad's CPU runtime uses one
(docs/BACKENDS.md, "Why auto picks CL"). CPU precedes CPU:LLVM (a tie) because a plain target needs no DEV context
to keep its renderer. Skipped accelerators are logged; when auto has to skip a
CPU-class backend (e.g. CL without an OpenCL ICD) it warns.
"""
from __future__ import annotations
import contextlib, logging, os, warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from backends.probe import TIMEOUT, available, probe
from backends.registry import BackendInfo, SelectionError, format_table, lookup

ACCELERATORS = ("METAL", "CUDA", "NV", "AMD")
CPU_CLASS = ("CL", "CPU", "CPU:LLVM", "CPU:X86", "PYTHON")
AUTO_ORDER = ACCELERATORS + CPU_CLASS
log = logging.getLogger(__name__)


class BackendUnavailable(SelectionError):
  """A known backend that cannot run here; the message has the reason and what does run."""


def select(preference: str | Sequence[str] = "auto", timeout: float = TIMEOUT) -> BackendInfo:
  """The backend to run on: a name ("CL"), a priority list (["CUDA", "CL"] or "CUDA,CL,CPU"), or "auto"."""
  source = "device"
  if isinstance(preference, str) and preference.strip().lower() == "auto" and (env := os.environ.get("TFM_DEVICE", "").strip()):
    preference, source = env, "TFM_DEVICE"
  names = _parse(preference, source)
  if names == ["auto"]: return _auto(timeout)
  infos = _probe_all(names, timeout)
  if (chosen := next((i for i in infos if i.runs), None)) is None:
    prefix = f"TFM_DEVICE={preference!r}: " if source == "TFM_DEVICE" else ""
    raise BackendUnavailable(f"{prefix}{_why(infos)}. Backends that run here: {_running(timeout)}")
  if chosen is not infos[0]: warnings.warn(f"{_why(infos[:infos.index(chosen)])}; using {chosen.name}", stacklevel=2)
  return chosen


@contextlib.contextmanager
def use(backend: BackendInfo | str | Sequence[str] = "auto") -> Iterator[BackendInfo]:
  """Run the block on `backend` (a BackendInfo, or anything select() takes): sets tinygrad's DEV to its target.

  Renderer targets need this around every realize: tinygrad picks the renderer from DEV at compile time.
  """
  from tinygrad import Context
  info = backend if isinstance(backend, BackendInfo) else select(backend)
  with Context(DEV=info.target): yield info


def _parse(preference: str | Sequence[str], source: str) -> list[str]:
  parts = preference.split(",") if isinstance(preference, str) else list(preference) if isinstance(preference, Sequence) else None
  if not parts or any(not isinstance(p, str) or not p.strip() for p in parts):
    raise SelectionError(f"{source}={preference!r}: expected a backend name, a comma-separated priority list or 'auto'")
  if len(parts) == 1 and parts[0].strip().lower() == "auto": return ["auto"]
  try: return [lookup(p).name for p in parts]
  except SelectionError as e: raise SelectionError(f"{source}={preference!r}: {e}") from None


def _auto(timeout: float) -> BackendInfo:
  infos = {i.name: i for i in available(timeout)}
  for name in AUTO_ORDER:
    if infos[name].runs:
      skipped = [infos[n] for n in CPU_CLASS[:CPU_CLASS.index(name)]] if name in CPU_CLASS else []
      if skipped: warnings.warn(f"auto: {_why(skipped)}; falling back to {name}", stacklevel=3)
      return infos[name]
    log.info("auto: skipping %s (%s: %s)", name, infos[name].status, infos[name].reason)
  raise BackendUnavailable("no backend runs here:\n" + format_table(list(infos.values())))


def _probe_all(names: list[str], timeout: float) -> list[BackendInfo]:
  if len(names) == 1: return [probe(names[0], timeout)]
  with ThreadPoolExecutor(len(names)) as pool: return list(pool.map(lambda n: probe(n, timeout), names))


def _why(infos: list[BackendInfo]) -> str: return "; ".join(f"{i.name} is {i.status} here ({i.reason})" for i in infos)


def _running(timeout: float) -> str: return ", ".join(i.name for i in available(timeout) if i.runs) or "none"
