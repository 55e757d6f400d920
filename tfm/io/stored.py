"""safetensors files of float arrays, the layer under tfm's weight format (tfm.io.weights) and the importers: written
atomically with a checksum of every tensor and metadata entry, read one tensor at a time, checked name by name.

numpy has no bfloat16: bfloat16 tensors are written through safetensors' TensorSpec as genuine BF16 (the upper 16 bits
of each float32, rounded to nearest even) and read back as their uint16 bit patterns, widened exactly to float32.
Reading never holds a whole file in memory: safetensors checks the header, then each tensor is read from the file when
it is asked for (`StoredArrays`).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from typing import Any, Iterator, Mapping

import numpy as np
from safetensors import SafetensorError, TensorSpec, safe_open, serialize_file

from tfm.errors import WeightsError
from tfm.files import atomic_write
from tfm.runtime.memory import bfloat16_bits, widen_bfloat16

# tfm.dtype -> the safetensors dtype code of every tensor; an "int8" file holds I8 quantized weights, the rest F32
STORAGE_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int8": "F32"}
FLOAT_OF = {"float32": "float32", "float16": "float16", "bfloat16": "float32", "int8": "float32"}   # floats' numpy dtype
SHOWN = 5  # names listed in an error before "and N more"
CHECKSUM = "tfm.sha256"


def _names(names: list[str]) -> str:
  more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
  return ", ".join(names[:SHOWN]) + more


def checksum(stored: Mapping[str, np.ndarray], metadata: dict[str, str]) -> str:
  """sha256 of the metadata (but the checksum) and each tensor's name, dtype, shape and stored bytes (BF16 as uint16)."""
  h = hashlib.sha256(json.dumps(sorted((k, v) for k, v in metadata.items() if k != CHECKSUM)).encode())
  for name in sorted(stored):
    a = np.ascontiguousarray(stored[name])
    h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
    h.update(a.reshape(-1).view(np.uint8))
  return h.hexdigest()


def _header(f) -> tuple[dict[str, Any], list[str]]:
  """The JSON header of a safetensors file open at its start, and the names it lists twice (JSON keeps the last
  silently, so such a file is ambiguous); ({}, []) when the header is unreadable, which safetensors then reports."""
  n = int.from_bytes(f.read(8), "little")
  if n > os.fstat(f.fileno()).st_size - 8: return {}, []
  dups: list[str] = []
  def pairs(items: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in items]
    dups.extend(k for i, k in enumerate(keys) if k in keys[:i])
    return dict(items)
  try: header = json.loads(f.read(n), object_pairs_hook=pairs)
  except ValueError: return {}, []
  return (header if isinstance(header, dict) else {}), dups


_STORED = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I8": np.int8}   # numpy dtype of each code's bytes


class StoredArrays(Mapping[str, np.ndarray]):
  """The tensors of a safetensors file, each read from the file when it is asked for: float32 arrays, or through
  `stored()` the values as stored (BF16 as its uint16 bit patterns, for the checksum). Read only files that safetensors
  has checked (read_arrays does); one replaced or changed since this opened it is refused, never read half old, half new."""

  def __init__(self, path: str):
    self.path, self.raw = path, False
    with open(path, "rb") as f:
      header, self.duplicates = _header(f)
      self.start = f.tell()
      st = os.fstat(f.fileno())
    self.stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    self.entries = {k: v for k, v in header.items() if k != "__metadata__"}

  def stored(self) -> StoredArrays:
    """The same tensors of the same file as stored, for the checksum."""
    view = copy.copy(self)
    view.raw = True
    return view

  def __getitem__(self, name: str) -> np.ndarray:
    entry = self.entries[name]
    begin, end = entry["data_offsets"]
    with open(self.path, "rb") as f:
      st = os.fstat(f.fileno())
      if (st.st_ino, st.st_size, st.st_mtime_ns) != self.stamp:
        raise WeightsError(f"{self.path} changed while it was being read; load it again once it is written")
      f.seek(self.start + begin)
      dtype = np.dtype(_STORED[entry["dtype"]])
      a = np.fromfile(f, dtype, (end - begin) // dtype.itemsize)
    a = a.reshape(entry["shape"])
    if self.raw: return a
    return widen_bfloat16(a) if entry["dtype"] == "BF16" else a.astype(np.float32, copy=False)

  def __iter__(self) -> Iterator[str]: return iter(self.entries)
  def __len__(self) -> int: return len(self.entries)
  def shape(self, name: str) -> tuple[int, ...]: return tuple(self.entries[name]["shape"])   # from the header, not read


class Pending(Mapping[str, np.ndarray]):
  """The tensors of a file (a StoredArrays) that an importer has not yet taken, each read when asked for: it takes the
  ones it maps by hand (`pop`, `del`) and maps the rest by name (`renamed`), so that a checkpoint goes to the device one
  tensor at a time and is never whole in host memory beside the model."""

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    self.arrays, self.names = arrays, dict.fromkeys(arrays)

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self.names: raise KeyError(name)
    return self.arrays[name]

  def __contains__(self, name: object) -> bool: return name in self.names   # without reading the tensor
  def __delitem__(self, name: str) -> None: del self.names[name]
  def pop(self, name: str) -> np.ndarray:
    value = self[name]
    del self.names[name]
    return value

  def __iter__(self) -> Iterator[str]: return iter(list(self.names))
  def __len__(self) -> int: return len(self.names)

  def shape(self, name: str) -> tuple[int, ...]:
    """A tensor's shape, from the file's header (without reading the tensor)."""
    if name not in self.names: raise KeyError(name)
    return shape_of(self.arrays, name)

  def taken(self, names: dict[str, str]) -> Mapping[str, np.ndarray]:
    """Tensors taken out by hand, under new names (new name -> the file's), still read when asked for."""
    return Renamed(self.arrays, names)

  def renamed(self, rename) -> Mapping[str, np.ndarray]:
    """The tensors left, under rename(name), still read when asked for."""
    return Renamed(self.arrays, {rename(name): name for name in self.names})


class Renamed(Mapping[str, np.ndarray]):
  """Tensors of a file under other names (new name -> the file's), each read when asked for."""

  def __init__(self, arrays: Mapping[str, np.ndarray], names: dict[str, str]):
    self.arrays, self.names = arrays, names

  def __getitem__(self, name: str) -> np.ndarray: return self.arrays[self.names[name]]
  def shape(self, name: str) -> tuple[int, ...]: return shape_of(self.arrays, self.names[name])
  def __contains__(self, name: object) -> bool: return name in self.names
  def __iter__(self) -> Iterator[str]: return iter(self.names)
  def __len__(self) -> int: return len(self.names)


def write_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict[str, str], dtype: str) -> None:
  """Store float arrays as one safetensors file in the storage dtype, atomically. In an "int8" file the int8 arrays
  (quantized weights) are stored as I8 and every other array as float32."""
  if dtype not in STORAGE_CODES:
    raise WeightsError(f"storage dtype {dtype!r} is not supported; choose one of {', '.join(STORAGE_CODES)}")
  stored = {}
  for name, arr in arrays.items():
    if dtype == "int8" and np.asarray(arr).dtype == np.int8:
      stored[name] = np.ascontiguousarray(arr)
      continue
    arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
      raise WeightsError(f"tensor {name} has NaN or Inf values; refusing to save weights that cannot be loaded "
                         f"(the model diverged: save an earlier checkpoint)")
    with np.errstate(over="ignore"):  # an overflow is reported below, naming the tensor
      stored[name] = bfloat16_bits(arr) if dtype == "bfloat16" else np.ascontiguousarray(arr.astype(FLOAT_OF[dtype]))
    if not np.isfinite(widen_bfloat16(stored[name]) if dtype == "bfloat16" else stored[name]).all():
      raise WeightsError(f"tensor {name} has values up to {np.abs(arr).max():.3g}, beyond what {dtype} holds; "
                         f"save as dtype='float32'" + (" or 'bfloat16'" if dtype == "float16" else ""))
  # TensorSpec names the dtype itself, so the uint16 bit patterns go in as real BF16 tensors
  metadata = {**metadata, CHECKSUM: checksum(stored, metadata)}
  specs = {name: TensorSpec(dtype="bfloat16" if dtype == "bfloat16" else a.dtype.name, shape=a.shape,
                            data_ptr=a.ctypes.data, data_len=a.nbytes) for name, a in stored.items()}
  atomic_write(path, lambda tmp: serialize_file(specs, tmp, metadata=metadata))


def read_arrays(path: str | os.PathLike, what: str = "weight file") -> tuple[dict[str, str], StoredArrays, dict[str, str]]:
  """A safetensors file -> (metadata, its tensors as float32 arrays read on demand, stored dtype codes); F32, F16 and
  BF16 only. Bad files raise WeightsError."""
  path = os.fspath(path)
  if os.path.isdir(path):
    raise WeightsError(f"{path} is a directory, not a {what}; give the path of a .safetensors file")
  if not os.path.exists(path): raise WeightsError(f"{what} {path} does not exist; check the path")
  try:
    arrays = StoredArrays(path)
    if arrays.duplicates:
      raise WeightsError(f"{path}: the header lists {_names(arrays.duplicates)} more than once; the file is damaged, write it again")
    with safe_open(path, framework="numpy") as f:   # checks the header: offsets, sizes, dtypes
      metadata = f.metadata() or {}
      codes = {name: f.get_slice(name).get_dtype() for name in f.keys()}
    bad = {n: c for n, c in codes.items() if c not in _STORED}
    if bad:
      name = sorted(bad)[0]
      raise WeightsError(f"{path}: tensor {name} has dtype {bad[name]}; weights must be F32, F16 or BF16 floats (or I8, quantized)")
    if CHECKSUM in metadata and metadata[CHECKSUM] != checksum(arrays.stored(), metadata):
      raise WeightsError(f"{path}: its contents do not match the checksum ({CHECKSUM}) written with them: the file was "
                         f"damaged after it was written; write it again or restore a copy")
  except SafetensorError as e:
    raise WeightsError(f"{path} is not a readable safetensors {what} ({e}): the file is truncated or of another "
                       f"format; write it again (tfm.save, tfm convert)") from None
  except OSError as e:
    raise WeightsError(f"cannot read {what} {path}: {e.strerror or e}; check its permissions") from None
  return metadata, arrays, codes


def shape_of(arrays: Mapping[str, np.ndarray], name: str) -> tuple[int, ...]:
  """A tensor's shape: from its file's header where `arrays` reads a file (StoredArrays, Pending, Renamed), else its own."""
  shape = getattr(arrays, "shape", None)
  return shape(name) if callable(shape) else tuple(arrays[name].shape)


def check_arrays(arrays: Mapping[str, np.ndarray], expected: dict[str, tuple[int, ...]], source: str, values: bool = True) -> None:
  """Every expected name present with its shape, no other names, every value finite: else WeightsError, nothing loaded.
  Each array is taken once (a file's are read one at a time). values=False checks names and shapes only, reading no
  tensor of a file (the shapes from its header): an importer's check, before the loader checks the values."""
  missing, unexpected = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
  if missing: raise WeightsError(f"{source}: missing tensor(s) {_names(missing)}; the file does not match its config")
  if unexpected: raise WeightsError(f"{source}: unexpected tensor(s) {_names(unexpected)}; the file does not match its config")
  for name, shape in expected.items():
    if not values:
      if (got := shape_of(arrays, name)) != tuple(shape):
        raise WeightsError(f"{source}: tensor {name} has shape {got}, the config expects {tuple(shape)}")
      continue
    a = arrays[name]
    if tuple(a.shape) != tuple(shape):
      raise WeightsError(f"{source}: tensor {name} has shape {tuple(a.shape)}, the config expects {tuple(shape)}")
    if not np.isfinite(a).all():
      raise WeightsError(f"{source}: tensor {name} has {int((~np.isfinite(a)).sum())} NaN/Inf values; "
                         f"the file is damaged or was saved from a diverged model")
