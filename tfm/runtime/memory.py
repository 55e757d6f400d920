"""Host <-> device copies that schedule no kernel: device tensors made from host arrays, written and read in place.

`Tensor(array).realize()` builds a graph, schedules it and lowers a copy kernel, a few milliseconds of Python per
tensor; a model load (one tensor per weight) and a decode session (a dozen buffers) paid that in every new process.
These helpers allocate the device buffer and copy the bytes into it directly: what tinygrad itself does under its
copy kernel, without the scheduling.

A device is one name ("CL") or, for a model over several devices, a tuple of them (tfm.runtime.placement): a tensor is then
one buffer per device, each holding the whole array (axis None: replicated) or its slice along `axis` (sharded).
"""
from __future__ import annotations

import numpy as np
from tinygrad import Device, Tensor, dtypes
from tinygrad.device import Buffer
from tinygrad.dtype import DType

Devices = str | tuple[str, ...]


def bfloat16_bits(x: np.ndarray) -> np.ndarray:
  """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even as hardware conversions do."""
  bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
  return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def widen_bfloat16(bits: np.ndarray) -> np.ndarray:
  """bfloat16 bit patterns (uint16) -> float32, exactly."""
  return (bits.astype(np.uint32) << 16).view(np.float32)


def host_bytes(array: np.ndarray, dtype: DType) -> np.ndarray:
  """array converted on the host to the bytes a `dtype` buffer holds (bfloat16 as its bit patterns)."""
  if dtype == dtypes.bfloat16: return bfloat16_bits(array)
  return np.ascontiguousarray(array, dtype=np.dtype(dtype.fmt))


def _copy_in(buf: Buffer, data: np.ndarray) -> None:
  if not data.flags.writeable: data = data.copy()   # tinygrad-0.14: CL's copyin takes ctypes from_buffer of the host bytes (writable only)
  # tinygrad-0.14: a PYTHON Buffer over the host bytes (opaque=) copied in: Tensor(array) would schedule a copy kernel
  buf.copy_from(Buffer("PYTHON", buf.size, buf.dtype, opaque=memoryview(data).cast("B")))


def host_view(t: Tensor) -> np.ndarray | None:
  """t's device memory as a numpy array where the device is host memory (CPU), else None (also for several devices)."""
  if isinstance(t.device, tuple): return None
  # tinygrad-0.14: Tensor.uop.buffer and allocator._as_buffer (private) give host memory zero-copy
  buf = t.uop.buffer
  if not hasattr(buf.allocator, "_as_buffer") or buf.dtype == dtypes.bfloat16: return None
  return np.frombuffer(buf.as_memoryview(force_zero_copy=True), dtype=np.dtype(buf.dtype.fmt)).reshape(t.shape)


def _parts(array: np.ndarray, devices: tuple[str, ...], axis: int | None) -> list[np.ndarray]:
  """array as each of `devices` holds it: whole, or its slice along axis."""
  if axis is None: return [array] * len(devices)
  if array.shape[axis] % len(devices):
    raise ValueError(f"cannot split axis {axis} of shape {array.shape} evenly over {len(devices)} devices")
  return np.split(array, len(devices), axis)


def sharding(t: Tensor) -> tuple[tuple[str, ...], int | None] | None:
  """(devices, axis) of a tensor over several devices (axis None: replicated); None for one device."""
  # tinygrad-0.14: a multi-device tensor's shard axis is only on its uop (uop.axis)
  return (t.device, t.uop.axis) if isinstance(t.device, tuple) else None


def to_device(array: np.ndarray, device: Devices, dtype: DType | None = None, axis: int | None = None) -> Tensor:
  """A realized device tensor holding `array` (converted to `dtype`, default float32 for floats, else its own dtype);
  on several devices, replicated or split along `axis`."""
  array = np.asarray(array)
  if dtype is None: dtype = dtypes.float32 if array.dtype.kind == "f" else getattr(dtypes, array.dtype.name)  # int32, uint8, bool, ...
  if isinstance(device, str):
    t = Tensor.empty(*array.shape, dtype=dtype, device=device)
    # tinygrad-0.14: an empty tensor's Buffer (uop.buffer) allocated and written directly: no copy kernel
    t.uop.buffer.allocate()
    _copy_in(t.uop.buffer, host_bytes(array, dtype))
    return t
  parts = _parts(array, device, axis)
  t = Tensor.empty(*parts[0].shape, dtype=dtype, device=device)
  # tinygrad-0.14: MultiBuffer .bufs written per device; uop.unshard(axis) makes the shards one sharded tensor
  for buf, part in zip(t.uop.buffer.bufs, parts):
    buf.allocate()
    _copy_in(buf, host_bytes(part, dtype))
  return t if axis is None else Tensor(t.uop.unshard(axis))


def like(array: np.ndarray, t: Tensor, dtype: DType | None = None) -> Tensor:
  """`array` on t's device(s), laid out as t is (replicated or split along the same axis), in dtype (default t's)."""
  return to_device(array, t.device, dtype or t.dtype, t.uop.axis if isinstance(t.device, tuple) else None)


def filled(shape: tuple[int, ...], dtype: DType, device: Devices, fill=0, axis: int | None = None) -> Tensor:
  """A realized device tensor of `shape` with every element `fill`."""
  return to_device(np.full(shape, fill, dtype=np.float32 if dtype == dtypes.bfloat16 else np.dtype(dtype.fmt)), device, dtype, axis)


def upload(t: Tensor, array: np.ndarray) -> None:
  """Write a host array into t's device buffer(s) in place (the compiled steps that read it keep reading it)."""
  # tinygrad-0.14: uop.buffer (.bufs) written in place: the compiled steps keep their buffers
  if (placed := sharding(t)) is not None:
    for buf, part in zip(t.uop.buffer.bufs, _parts(np.broadcast_to(array, t.shape), *placed)): _copy_in(buf, host_bytes(part, buf.dtype))
  elif (view := host_view(t)) is not None: view[...] = array
  else: _copy_in(t.uop.buffer, host_bytes(np.broadcast_to(array, t.shape), t.uop.buffer.dtype))


def _read(buf: Buffer, shape: tuple[int, ...]) -> np.ndarray:
  if buf.dtype == dtypes.bfloat16: return widen_bfloat16(np.frombuffer(buf.as_memoryview(), np.uint16)).reshape(shape)
  return buf.numpy().reshape(shape)


def download(t: Tensor) -> np.ndarray:
  """A host copy of a realized device buffer (of a tensor over several devices: the whole array)."""
  if (placed := sharding(t)) is not None:
    devices, axis = placed
    # tinygrad-0.14: a multi-device tensor's buffers (uop.buffer.bufs) read without a copy kernel
    bufs = t.uop.buffer.bufs
    if axis is None: return _read(bufs[0], t.shape)
    shape = tuple(n // len(devices) if i == axis else n for i, n in enumerate(t.shape))
    return np.concatenate([_read(b, shape) for b in bufs], axis)
  view = host_view(t)
  if view is not None: return view.copy()
  return _read(t.uop.buffer, t.shape)


def drain(device: Devices) -> None:
  """Wait until the device(s) have run what was queued (OpenCL keeps a copy's host array alive until then)."""
  # tinygrad-0.14: CL keeps each copyin's host bytes (pending_copyin) until synchronize
  for d in (device,) if isinstance(device, str) else device: Device[d].synchronize()
