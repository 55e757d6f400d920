"""Every backend tinygrad 0.14 offers: the name users type, the tinygrad target string, the kind of device.

A target string is what tinygrad's `DEV` takes: `DEVICE[:RENDERER[:ARCH]]`. `compile_target` names a `NULL`-device
target that compiles the backend's kernels without its hardware, for the "compile-only" status.
"""
from __future__ import annotations
from dataclasses import dataclass

RUNS, COMPILE_ONLY, UNAVAILABLE = "runs", "compile-only", "unavailable"


@dataclass(frozen=True)
class Backend:
  name: str                         # what users type, case-insensitive
  target: str                       # tinygrad DEV string
  kind: str                         # "cpu", "gpu", "opencl" (a GPU or a CPU: the probe tells) or "emulator"
  compile_target: str | None = None


BACKENDS: tuple[Backend, ...] = (
  Backend("CPU", "CPU", "cpu"),
  Backend("CPU:LLVM", "CPU:LLVM", "cpu"),
  Backend("CPU:X86", "CPU:X86", "cpu"),
  Backend("CL", "CL", "opencl"),
  Backend("CUDA", "CUDA", "gpu", "NULL:CUDA:sm_80"),
  Backend("CUDA:PTX", "CUDA:PTX", "gpu", "NULL:PTX:sm_80"),
  Backend("NV", "NV", "gpu", "NULL:CUDA:sm_80"),
  Backend("METAL", "METAL", "gpu"),
  Backend("AMD", "AMD", "gpu", "NULL:AMDLLVM:gfx1100"),
  Backend("WEBGPU", "WEBGPU", "gpu"),
  Backend("PYTHON", "PYTHON", "emulator"),
)
NAMES: tuple[str, ...] = tuple(b.name for b in BACKENDS)
_BY_NAME = {b.name: b for b in BACKENDS}


class SelectionError(ValueError):
  """A backend asked for that cannot be used: an unknown name, a malformed choice, or one that does not run here.
  The message says why and what to use instead."""


def lookup(name: str) -> Backend:
  """The backend called `name` (any case); a SelectionError listing the valid names otherwise."""
  if not isinstance(name, str) or (key := name.strip().upper()) not in _BY_NAME:
    raise SelectionError(f"unknown backend {name!r}: expected one of {', '.join(NAMES)} (any case)")
  return _BY_NAME[key]


@dataclass(frozen=True)
class BackendInfo:
  """What a probe found. `device` describes the hardware; `device_name` is what to pass as `Tensor(..., device=)`."""
  name: str
  target: str
  status: str         # RUNS, COMPILE_ONLY or UNAVAILABLE
  device: str = ""
  reason: str = ""    # why it does not run here, and the fix
  accelerator: bool = False
  count: int = 1      # devices of this backend here (a CPU backend: the cores; any number of CPU devices can be made)
  devices: tuple[str, ...] = ()   # set by select() for a multi-device choice ("CPU*2"): tinygrad device names

  @property
  def label(self) -> str:
    """The name to show and to select again: "CL", or for several devices "CPU*2" (or "CPU:1,CPU:3")."""
    if len(self.devices) <= 1 and self.devices in ((), (self.device_name,)): return self.name
    indices = [int(d.rpartition(":")[2]) if ":" in d else 0 for d in self.devices]
    if indices == list(range(len(indices))): return f"{self.name}*{len(indices)}"
    return ",".join(f"{self.name}:{i}" for i in indices)

  @property
  def tensor_device(self) -> str | tuple[str, ...]:
    """What to pass as `Tensor(..., device=)`: the device name, or the tuple of devices a multi-device choice names."""
    return self.devices if len(self.devices) > 1 else self.devices[0] if self.devices else self.device_name

  @property
  def runs(self) -> bool: return self.status == RUNS

  @property
  def device_name(self) -> str:
    # tinygrad picks the renderer from DEV at compile time, keyed by the bare device: "CPU:LLVM" is device "CPU" under DEV=CPU:LLVM
    return self.target.split(":")[0]


def format_table(infos: list[BackendInfo]) -> str:
  """name | status | device | reason, in aligned columns, one backend a line."""
  from backends.tables import aligned
  return aligned([["name", "status", "device", "reason"]] + [[i.name, i.status, i.device, i.reason] for i in infos])
