"""Choose the backend to run on: an explicit name, a priority list, or "auto".

Precedence: an explicit name or list > $TFM_DEVICE (it replaces "auto", and only "auto") > the auto order.
An explicit name probes only that backend; a list probes its members; auto probes everything, in parallel.

Auto order, fixed (not benchmarked per run): accelerators METAL, CUDA, NV, AMD, and CL where its device is a GPU; then
CPU, CL (OpenCL on the CPU: PoCL), CPU:LLVM, CPU:X86, PYTHON. CPU comes first among the CPU-class backends: tfm's own
CPU kernels (the GEMM, packed decode products) and its running of every kernel's slices on all cores make it 2 to 5
times faster than PoCL at every job measured (docs/BACKENDS.md, "Why auto picks CPU"). CPU precedes CPU:LLVM because
a plain target needs no DEV context to keep its renderer. Skipped accelerators are logged; when auto has to skip a
CPU-class backend (e.g. CPU without clang) it warns.

Several devices of one backend, for a model sharded over them: "CPU*2" (the first two), "CUDA:0,CUDA:1", or a
sequence of devices (("CPU:0", "CPU:1"), or tinygrad's own form ("CPU", "CPU:1"), where in a tuple beside indexed names
a bare one is device 0). The result's `devices` holds tinygrad's names for them ("CPU", "CPU:1"). A name with a device
index is a device and one without is a backend: a tuple or list of bare names stays a priority list, and mixing the
two in a comma-separated string or a list is a mistake, refused.
CPU devices are made on demand (each is one worker thread), so any number may be asked for; an accelerator's index
must be one the probe counted.
"""
from __future__ import annotations
import contextlib, dataclasses, logging, re, warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from backends import switches
from backends.probe import TIMEOUT, available, probe
from backends.registry import BackendInfo, SelectionError, format_table, lookup

ACCELERATORS = ("METAL", "CUDA", "NV", "AMD")
CPU_CLASS = ("CPU", "CL", "CPU:LLVM", "CPU:X86", "PYTHON")
log = logging.getLogger(__name__)


class BackendUnavailable(SelectionError):
  """A known backend that cannot run here; the message has the reason and what does run."""


def select(preference: str | Sequence[str] = "auto", timeout: float = TIMEOUT) -> BackendInfo:
  """The backend to run on: a name ("CL"), a priority list (["CUDA", "CL"] or "CUDA,CL,CPU"), or "auto"."""
  source = "device"
  if isinstance(preference, str) and preference.strip().lower() == "auto" and (env := switches.device()):
    preference, source = env, "TFM_DEVICE"
  if (several := _devices(preference, source)) is not None: return _select_devices(*several, source, timeout)
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


_INDEXED = re.compile(r"^(.+):(\d+)$")


def _devices(preference: str | Sequence[str], source: str) -> tuple[str, list[int]] | None:
  """(backend name, device indices) for a multi-device spelling ("CPU*2", "CPU:0,CPU:1", ("CPU:0", "CPU:1")), None for
  anything else (a backend name, a priority list, "auto")."""
  if isinstance(preference, str) and "*" in preference:
    name, _, count = preference.partition("*")
    if not count.strip().isdigit() or int(count) < 1:
      raise SelectionError(f"{source}={preference!r}: expected BACKEND*COUNT with a count of at least 1, e.g. 'CPU*2'")
    try: return lookup(name).name, list(range(int(count)))
    except SelectionError as e: raise SelectionError(f"{source}={preference!r}: {e}") from None
  parts = preference.split(",") if isinstance(preference, str) else list(preference) if isinstance(preference, Sequence) else []
  if not all(isinstance(p, str) for p in parts): return None   # _parse refuses it
  if isinstance(preference, tuple) and any(_INDEXED.match(p.strip()) for p in parts if isinstance(p, str)):
    # tinygrad's form ("CPU", "CPU:1"): beside indexed names a bare one is device 0 (and an unknown one is refused)
    try: parts = [p if (m := _INDEXED.match(p.strip())) and _known(m.group(1)) else f"{lookup(p).name}:0" for p in parts]
    except SelectionError as e: raise SelectionError(f"{source}={preference!r}: {e}") from None
  indexed = [m for p in parts if (m := _INDEXED.match(p.strip())) and _known(m.group(1))]
  if not indexed: return None
  if len(indexed) < len(parts):
    raise SelectionError(f"{source}={preference!r} mixes devices (with an index, 'CPU:0') and backends (without one): "
                         f"give devices of one backend ('CPU:0,CPU:1' or 'CPU*2') or a priority list of backends ('CUDA,CL')")
  names = {lookup(m.group(1)).name for m in indexed}
  if len(names) > 1:
    raise SelectionError(f"{source}={preference!r}: the devices must all be of one backend, got {', '.join(sorted(names))}; "
                         f"a model is sharded over devices of one kind")
  indices = [int(m.group(2)) for m in indexed]
  if len(set(indices)) < len(indices):
    raise SelectionError(f"{source}={preference!r} names a device twice; give each device once")
  return names.pop(), indices


def _known(name: str) -> bool:
  try: return bool(lookup(name))
  except SelectionError: return False


def several(spelling: str | Sequence[str], timeout: float = TIMEOUT) -> BackendInfo:
  """The probe of a multi-device spelling's backend ("CUDA*2") with its `devices` set, whether it runs here or not:
  for compile checks of a split model on a backend without its hardware. select() is for running on them."""
  if (parsed := _devices(spelling, "devices")) is None:
    raise SelectionError(f"devices={spelling!r}: expected several devices of one backend, e.g. 'CUDA*2' or 'CUDA:0,CUDA:1'")
  name, indices = parsed
  info = probe(name, timeout)
  return _select_devices(name, indices, "devices", timeout) if info.runs else dataclasses.replace(info, devices=_names(info, indices))


def _names(info: BackendInfo, indices: list[int]) -> tuple[str, ...]:
  return tuple(info.device_name if i == 0 else f"{info.device_name}:{i}" for i in indices)


def _select_devices(name: str, indices: list[int], source: str, timeout: float) -> BackendInfo:
  info = probe(name, timeout)
  prefix = "TFM_DEVICE: " if source == "TFM_DEVICE" else ""
  if not info.runs: raise BackendUnavailable(f"{prefix}{_why([info])}. Backends that run here: {_running(timeout)}")
  if lookup(name).kind not in ("cpu", "emulator") and (missing := [i for i in indices if i >= info.count]):
    raise SelectionError(f"{prefix}there is no device {name}:{missing[0]}: {name} has {info.count} device"
                         f"{'s' if info.count != 1 else ''} here ({', '.join(f'{name}:{i}' for i in range(info.count))})")
  return dataclasses.replace(info, devices=_names(info, indices))


def _parse(preference: str | Sequence[str], source: str) -> list[str]:
  parts = preference.split(",") if isinstance(preference, str) else list(preference) if isinstance(preference, Sequence) else None
  if not parts or any(not isinstance(p, str) or not p.strip() for p in parts):
    raise SelectionError(f"{source}={preference!r}: expected a backend name, a comma-separated priority list or 'auto'")
  if len(parts) == 1 and parts[0].strip().lower() == "auto": return ["auto"]
  try: return [lookup(p).name for p in parts]
  except SelectionError as e: raise SelectionError(f"{source}={preference!r}: {e}") from None


def _auto(timeout: float) -> BackendInfo:
  infos = {i.name: i for i in available(timeout)}
  gpus = ("CL",) if infos["CL"].accelerator else ()   # an OpenCL GPU is an accelerator; PoCL is CPU-class
  for name in ACCELERATORS + gpus + tuple(n for n in CPU_CLASS if n not in gpus):
    if infos[name].runs:
      skipped = [infos[n] for n in CPU_CLASS[:CPU_CLASS.index(name)]] if name in CPU_CLASS and name not in gpus else []
      if skipped: warnings.warn(f"auto: {_why(skipped)}; falling back to {name}", stacklevel=3)
      return infos[name]
    log.info("auto: skipping %s (%s: %s)", name, infos[name].status, infos[name].reason)
  raise BackendUnavailable("no backend runs here:\n" + format_table(list(infos.values())))


def _probe_all(names: list[str], timeout: float) -> list[BackendInfo]:
  if len(names) == 1: return [probe(names[0], timeout)]
  with ThreadPoolExecutor(len(names)) as pool: return list(pool.map(lambda n: probe(n, timeout), names))


def _why(infos: list[BackendInfo]) -> str: return "; ".join(f"{i.name} is {i.status} here ({i.reason})" for i in infos)


def _running(timeout: float) -> str: return ", ".join(i.name for i in available(timeout) if i.runs) or "none"
