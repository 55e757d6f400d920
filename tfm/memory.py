"""Host <-> device copies that schedule no kernel: device tensors made from host arrays, written and read in place.

`Tensor(array).realize()` builds a graph, schedules it and lowers a copy kernel, a few milliseconds of Python per
tensor; a model load (one tensor per weight) and a decode session (a dozen buffers) paid that in every new process.
These helpers allocate the device buffer and copy the bytes into it directly: what tinygrad itself does under its
copy kernel, without the scheduling.
"""
from __future__ import annotations

import numpy as np
from tinygrad import Device, Tensor, dtypes
from tinygrad.device import Buffer
from tinygrad.dtype import DType


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
  if not data.flags.writeable: data = data.copy()   # some runtimes (OpenCL) take the address of the host bytes
  buf.copy_from(Buffer("PYTHON", buf.size, buf.dtype, opaque=memoryview(data).cast("B")))


def host_view(t: Tensor) -> np.ndarray | None:
  """t's device memory as a numpy array where the device is host memory (CPU), else None."""
  buf = t.uop.buffer
  if not hasattr(buf.allocator, "_as_buffer") or buf.dtype == dtypes.bfloat16: return None
  return np.frombuffer(buf.as_memoryview(force_zero_copy=True), dtype=np.dtype(buf.dtype.fmt)).reshape(t.shape)


def to_device(array: np.ndarray, device: str, dtype: DType | None = None) -> Tensor:
  """A realized device tensor holding `array` (converted to `dtype`, default float32 for floats, else its own dtype)."""
  array = np.asarray(array)
  if dtype is None: dtype = dtypes.float32 if array.dtype.kind == "f" else getattr(dtypes, array.dtype.name)  # int32, uint8, bool, ...
  t = Tensor.empty(*array.shape, dtype=dtype, device=device)
  t.uop.buffer.allocate()
  _copy_in(t.uop.buffer, host_bytes(array, dtype))
  return t


def filled(shape: tuple[int, ...], dtype: DType, device: str, fill=0) -> Tensor:
  """A realized device tensor of `shape` with every element `fill`."""
  return to_device(np.full(shape, fill, dtype=np.float32 if dtype == dtypes.bfloat16 else np.dtype(dtype.fmt)), device, dtype)


def upload(t: Tensor, array: np.ndarray) -> None:
  """Write a host array into t's device buffer in place (the compiled steps that read it keep reading it)."""
  if (view := host_view(t)) is not None: view[...] = array
  else: _copy_in(t.uop.buffer, host_bytes(np.broadcast_to(array, t.shape), t.uop.buffer.dtype))


def download(t: Tensor) -> np.ndarray:
  """A host copy of a realized device buffer."""
  view = host_view(t)
  if view is not None: return view.copy()
  buf = t.uop.buffer
  if buf.dtype == dtypes.bfloat16: return widen_bfloat16(np.frombuffer(buf.as_memoryview(), np.uint16)).reshape(t.shape)
  return buf.numpy().reshape(t.shape)


def drain(device: str) -> None:
  """Wait until the device has run what was queued (OpenCL keeps a copy's host array alive until then)."""
  Device[device].synchronize()
