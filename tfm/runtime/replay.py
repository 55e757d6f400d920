"""Compiled steps: a step function captured once with TinyJit, then replayed by launching its kernels directly, and
kept in the compiled-program cache (tfm.runtime.cache) so that the next process launches them without capturing anything.

tinygrad's own replay spends tens of microseconds of Python per kernel, which on a CPU is most of a small model's
decode step; launching the captured programs directly is the same programs on the same buffers with the same launch
sizes. The launch list is also what the cache keeps: per kernel its compiled binary, its launch information and the
role of each buffer it reads or writes, where a role is a name given by the step's owner (a weight, a KV cache, an
input buffer), scratch memory (only its size: the step writes it before it reads it) or constant data (read before
anything writes it: its bytes are kept). A new process names its own buffers the same way and gets the same launches.

A step over several devices (a model split by tfm.runtime.placement) whose kernels never cross devices (no copies: a data-
parallel step) is replayed as one launch list per device, run at the same time, one thread per device: tinygrad 0.14
runs each kernel on the thread that launches it (on CPU, the calling thread, whatever the device), so launched from one
thread, n CPU devices would use one core. A capture with copies between devices (tensor parallel, a training step's
all-reduce) is replayed by TinyJit, in order.

On one CPU device, a kernel tinygrad split into per-core slices (its THREAD option) has its slices run at once on the
calling thread and helper threads (tfm.runtime.cores): tinygrad 0.14 calls them one after the other, so a CPU device used one
core. TFM_CORES=0 turns this off.

This is the one module that reaches into tinygrad's captured-JIT internals (`jit.captured`, `get_runtime`,
`unwrap_multi`, `ProgramInfo`, a CPU program's `fxn` and `runtimevars`): what a tinygrad upgrade can break is here.
"""
from __future__ import annotations

import contextlib
import pickle
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Callable

from tinygrad import Device, Tensor, TinyJit, UOp
from tinygrad.device import Buffer
# tinygrad-0.14: engine.realize internals (get_runtime, resolve_params, unwrap_multi) resolve captured kernels
from tinygrad.engine.realize import get_runtime, resolve_params, unwrap_multi
from tinygrad.helpers import DEBUG, PROFILE, GlobalCounters
from tinygrad.uop.ops import Ops

from tfm.runtime import cache
from tfm.runtime.cores import CORES, core_slot

Launch = tuple[Any, list, Any, Any, dict, str]   # program, device buffers, launch sizes unless symbolic, ProgramInfo, device vars, device
_threads: dict[str, ThreadPoolExecutor] = {}   # by device: the one thread that replays that device's launches


class CompiledStep:
  """A step (a function of an optional bound Variable that realizes its writes) compiled once and replayed.

  `named()` returns the tensors the step reads and writes under stable names (weights, caches, inputs); with a
  `key` (a dict of what identifies the step: its kind and shapes, the model's config) the step is looked up in and
  stored to the compiled-program cache. Without them it is captured in every process, as plain TinyJit is."""

  def __init__(self, fn: Callable, variable: UOp | None, on_device: Callable[[], contextlib.AbstractContextManager],
               key: dict | None = None, named: Callable[[], dict[str, Tensor]] | None = None, target: str = ""):
    # on_device: the model's compile context (its renderer, its tuned kernels); TinyJit compiles what it captured
    # after fn returns, so the whole call runs inside it
    self.jit, self.variable, self.on_device = TinyJit(fn), variable, on_device
    self.jit.cnt = 1   # tinygrad-0.14: TinyJit.cnt is internal; 1 captures on the first call (its uncaptured first run schedules twice)
    self.key_parts, self.named, self.target = key, named, target
    self.launches: list[Launch] | None = None
    self.lanes: list[list[Launch]] = []   # the launches by device, when they are on several
    self.key: dict | None = None
    self.looked_up = key is None or named is None
    self._held: list[Buffer] = []   # scratch and constant buffers of a restored step

  def __call__(self, value: int | None = None) -> None:
    if self.launches is None and not self.looked_up:
      self.looked_up = True
      self._set(self._restore())
    if not self.launches or DEBUG >= 2 or PROFILE:  # capturing, a kind of call this cannot launch, or debug output wanted
      with self.on_device(): self.jit(*([] if self.variable is None else [self.variable.bind(value)]))
      if self.launches is None and self.jit.captured is not None:   # just captured
        self._set(_launches(self.jit))
        if self.launches and self.key_parts is not None and self.named is not None: self._store()
      return
    var_vals = {} if self.variable is None else {self.variable.expr: value}
    # tinygrad-0.14: a kernel runs on the thread that launches it (CPU: one core per device): a thread per lane
    if len(self.lanes) > 1:
      running = [_thread_of(lane[0][5]).submit(_launch, lane, var_vals) for lane in self.lanes]
      wait(running)   # every lane finished (a failing one must not leave others writing the step's buffers), then errors
      for done in running: done.result()
    else: _launch(self.launches, var_vals, cores=True)
    GlobalCounters.kernel_count += len(self.launches)

  def _set(self, launches: list[Launch] | None) -> None:
    self.launches = launches
    by_device: dict[Any, list[Launch]] = {}
    for launch in launches or []: by_device.setdefault(launch[5], []).append(launch)
    self.lanes = list(by_device.values())

  # --- the compiled-program cache ---------------------------------------------------------------------------------

  def _key(self) -> dict:
    with self.on_device(): return cache.key_for(self.key_parts or {}, self.target)

  def _store(self) -> None:
    names = {id(buf): name for name, buf in _named_buffers(self.named()).items()}
    cache.store(self.key or self._key(), pickle.dumps(_describe(self.jit, names), protocol=pickle.HIGHEST_PROTOCOL))

  def _restore(self) -> list[Launch] | None:
    self.key = key = self._key()   # kept: a miss stores under the same key once the step is captured
    if (payload := cache.lookup(key)) is None: return None
    try:
      described = pickle.loads(payload)
      launches, self._held = _rebuild(described, _named_buffers(self.named()))
    except Exception as e:  # a payload this tinygrad cannot rebuild: compile the step as if it were not there
      cache.discard(key, f"could not be restored ({type(e).__name__}: {str(e)[:120]})")
      return None
    return launches


def _thread_of(device: str) -> ThreadPoolExecutor:
  """The device's own replay thread. One per device, not a shared pool: a pool hands a lane to whichever of its threads
  is idle, so a lane that finished quickly would take the next device's lane too and run the two one after the other."""
  if (thread := _threads.get(device)) is None:
    thread = _threads[device] = ThreadPoolExecutor(1, thread_name_prefix=f"tfm-{device.replace(':', '')}")
  return thread


def _launch(launches: list[Launch], var_vals: dict, cores: bool = False) -> None:
  """Launch each kernel in order. cores: a CPU kernel split over cores runs its slices on the machine's cores at once
  (off for the lanes of several devices, which already keep the cores busy)."""
  for runtime, bufs, dims, info, device_vars, _ in launches:
    values = {**var_vals, **device_vars} if device_vars else var_vals
    # tinygrad-0.14: TinyJit's replay costs tens of us of Python per kernel: launched directly (ProgramInfo.launch_dims, vals)
    global_size, local_size = dims or info.launch_dims(values)
    vals = info.vals(values) if info.vars else ()
    if cores and global_size[0] > 1 and (slot := core_slot(runtime)) is not None: CORES.run(runtime, bufs, vals, slot, global_size[0])
    else: runtime(*bufs, global_size=global_size, local_size=local_size, vals=vals)


def _named_buffers(named: dict[str, Tensor]) -> dict[str, Buffer]:
  """The base buffer of each named tensor; a tensor over several devices gives one per device, as NAME@i."""
  out: dict[str, Buffer] = {}
  for name, t in named.items():
    buf = t.uop.buffer   # tinygrad-0.14: Tensor.uop.buffer (a MultiBuffer's .bufs) is internal
    if hasattr(buf, "bufs"): out.update({f"{name}@{i}": b.base for i, b in enumerate(buf.bufs)})
    else: out[name] = buf.base
  return out


def _captured_calls(jit) -> list | None:
  """Each captured kernel as (device, PROGRAM ast, buffers in launch order, device variables), a kernel over several
  devices once per device; or None when the capture holds anything else (copies, graphs): then TinyJit replays it."""
  calls = []
  # tinygrad-0.14: jit.captured.linear, its PROGRAM calls, resolve_params and unwrap_multi are internal
  for call in jit.captured.linear.src:
    ast = call.src[0]
    if ast.op is not Ops.PROGRAM: return None
    devices = (device,) if isinstance(device := call.src[1].device, str) else device
    lanes = list(unwrap_multi(call, [resolve_params(call, ())[i] for i in ast.arg.globals]))
    if len(lanes) != len(devices): return None
    calls += [(d, ast, [b.ensure_allocated() for b in bufs], dict(vars_)) for d, (bufs, vars_) in zip(devices, lanes)]
  return calls


def _dims(info) -> Any:
  sizes = (info.global_size, info.local_size or ())
  return info.launch_dims({}) if all(isinstance(x, int) for x in sizes[0] + sizes[1]) else None


def _launches(jit) -> list[Launch]:
  """The captured kernels as launches, resolved as tinygrad's exec_kernel resolves them ([] if they cannot be)."""
  calls = _captured_calls(jit)
  if calls is None: return []
  # tinygrad-0.14: get_runtime and Buffer.get_buf resolve a call as engine/realize's exec_kernel does
  return [(get_runtime(device, ast), [b.get_buf(device) for b in bufs], _dims(ast.arg), ast.arg, device_vars, device)
          for device, ast, bufs, device_vars in calls]


def _describe(jit, names: dict[int, str]) -> dict:
  """What `_rebuild` needs to launch the captured kernels in another process: per kernel its device, compiled
  program (TinyELF) and ProgramInfo, and per buffer (role, offset, size, dtype); scratch bases by size, constant
  bases with their bytes. A buffer is constant when a kernel reads it before any kernel writes it."""
  calls = _captured_calls(jit)
  assert calls is not None, "only a capture of plain kernels is described"
  bases: dict[int, int] = {}   # id(base Buffer) -> index into `anonymous`
  anonymous: list[dict] = []
  kernels = []
  for device, ast, bufs, device_vars in calls:
    info, refs = ast.arg, []
    for slot, b in zip(ast.arg.globals, bufs):
      base = b.base
      if (name := names.get(id(base))) is not None: role: Any = ("named", name, base.size, base.dtype)
      else:
        if id(base) not in bases:
          bases[id(base)] = len(anonymous)
          written_first = slot in info.outs and slot not in info.ins
          anonymous.append({"device": base.device, "size": base.size, "dtype": base.dtype,
                            "data": None if written_first else bytes(base.as_memoryview())})
        role = ("anonymous", bases[id(base)])
      refs.append((role, b.offset, b.size, b.dtype))
    # tinygrad-0.14: PROGRAM.to_elf and ProgramInfo (globals, ins, outs) are internal
    kernels.append((device, ast.to_elf(), info, refs, device_vars))
  return {"kernels": kernels, "anonymous": anonymous}


def _rebuild(described: dict, named: dict[str, Buffer]) -> tuple[list[Launch], list[Buffer]]:
  """Launches over this process's buffers for a described step, and the scratch/constant buffers they use."""
  # tinygrad-0.14: rebuilt from internals: PYTHON Buffer copies (opaque=), Buffer(base=, offset=) views, Device.runtime(elf)
  anonymous = []
  for a in described["anonymous"]:
    buf = Buffer(a["device"], a["size"], a["dtype"]).allocate()
    if a["data"] is not None: buf.copy_from(Buffer("PYTHON", a["size"], a["dtype"], opaque=memoryview(bytearray(a["data"]))))
    anonymous.append(buf)
  held, launches = list(anonymous), []
  for device, elf, info, refs, device_vars in described["kernels"]:
    bufs = []
    for role, offset, size, dtype in refs:
      if role[0] == "named":
        base = named[role[1]]
        if (base.size, base.dtype) != (role[2], role[3]):
          raise ValueError(f"buffer {role[1]} is {base.size} x {base.dtype} here, {role[2]} x {role[3]} in the entry")
      else: base = anonymous[role[1]]
      view = base if (offset, size, dtype) == (0, base.size, base.dtype) else Buffer(device, size, dtype, base=base, offset=offset)
      held.append(view)
      bufs.append(view.ensure_allocated().get_buf(device))
    launches.append((Device[device].runtime(elf), bufs, _dims(info), info, device_vars, device))
  return launches, held
