"""Weight files: a Transformer to and from safetensors, with its config in the file's metadata.

A tfm weight file (format version 1) holds
  tensors   the state dict under the model's attribute names (`encoder.layers.0.self_attn.q_proj.weight`, ...);
            a tied matrix is stored once, under its first name (`src_embed.weight`): the config's tie_embeddings
            says which names share it
  metadata  tfm.format_version = "1", tfm.kind = "transformer" (or "stacks": encoder and decoder stacks alone, as
            imported from torch.nn.Transformer), tfm.config = the TransformerConfig as JSON, tfm.dtype = the storage
            dtype of every tensor (float32, float16 or bfloat16), optionally tfm.generation_config (JSON: the
            decoding defaults a checkpoint came with, `model.generation_config`), and any str -> str entries the caller adds;
            tfm.sha256, the checksum of every tensor's stored bytes and every other metadata entry, lets a load refuse a
            file damaged after it was written (files without it load unchecked)

numpy has no bfloat16: bfloat16 tensors are written through safetensors' TensorSpec as genuine BF16 (the upper 16 bits
of each float32, rounded to nearest even) and read back as their uint16 bit patterns, widened exactly to float32.

Reading never holds a whole file in memory: safetensors checks the header, then each tensor is read from the file when
it is asked for (`StoredArrays`), so `load` peaks at the model's weights plus its largest tensor.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
from safetensors import SafetensorError, TensorSpec, safe_open, serialize_file
from tinygrad import Tensor, dtypes
from tinygrad.dtype import DType

from tfm.config import TransformerConfig
from tfm.errors import ConfigError, WeightsError
from tfm.files import atomic_write
from tfm.memory import bfloat16_bits, drain, to_device, widen_bfloat16
from tfm.model import Transformer, unique_state

FORMAT_VERSION = 1
KINDS = ("transformer", "stacks")
STORAGE_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}  # tfm.dtype -> safetensors dtype code
MODEL_DTYPES = {"float32": dtypes.float32, "float16": dtypes.float16, "bfloat16": dtypes.bfloat16}
SHOWN = 5  # names listed in an error before "and N more"
CHECKSUM = "tfm.sha256"


# --- files ------------------------------------------------------------------------------------------------------

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


_STORED = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}   # numpy dtype of each code's bytes


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


def write_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict[str, str], dtype: str) -> None:
  """Store float arrays as one safetensors file in the storage dtype, atomically."""
  if dtype not in STORAGE_CODES:
    raise WeightsError(f"storage dtype {dtype!r} is not supported; choose one of {', '.join(STORAGE_CODES)}")
  stored = {}
  for name, arr in arrays.items():
    arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
      raise WeightsError(f"tensor {name} has NaN or Inf values; refusing to save weights that cannot be loaded "
                         f"(the model diverged: save an earlier checkpoint)")
    with np.errstate(over="ignore"):  # an overflow is reported below, naming the tensor
      stored[name] = bfloat16_bits(arr) if dtype == "bfloat16" else np.ascontiguousarray(arr.astype(dtype))
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
    bad = {n: c for n, c in codes.items() if c not in STORAGE_CODES.values()}
    if bad:
      name = sorted(bad)[0]
      raise WeightsError(f"{path}: tensor {name} has dtype {bad[name]}; weights must be F32, F16 or BF16 floats")
    if CHECKSUM in metadata and metadata[CHECKSUM] != checksum(arrays.stored(), metadata):
      raise WeightsError(f"{path}: its contents do not match the checksum ({CHECKSUM}) written with them: the file was "
                         f"damaged after it was written; write it again or restore a copy")
  except SafetensorError as e:
    raise WeightsError(f"{path} is not a readable safetensors {what} ({e}): the file is truncated or of another "
                       f"format; write it again (tfm.save, tfm convert)") from None
  except OSError as e:
    raise WeightsError(f"cannot read {what} {path}: {e.strerror or e}; check its permissions") from None
  return metadata, arrays, codes


def check_arrays(arrays: Mapping[str, np.ndarray], expected: dict[str, tuple[int, ...]], source: str) -> None:
  """Every expected name present with its shape, no other names, every value finite: else WeightsError, nothing loaded.
  Each array is taken once (a file's are read one at a time)."""
  missing, unexpected = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
  if missing: raise WeightsError(f"{source}: missing tensor(s) {_names(missing)}; the file does not match its config")
  if unexpected: raise WeightsError(f"{source}: unexpected tensor(s) {_names(unexpected)}; the file does not match its config")
  for name, shape in expected.items():
    a = arrays[name]
    if tuple(a.shape) != tuple(shape):
      raise WeightsError(f"{source}: tensor {name} has shape {tuple(a.shape)}, the config expects {tuple(shape)}")
    if not np.isfinite(a).all():
      raise WeightsError(f"{source}: tensor {name} has {int((~np.isfinite(a)).sum())} NaN/Inf values; "
                         f"the file is damaged or was saved from a diverged model")


# --- the tfm format ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WeightFile:
  """What a tfm weight file holds: its config, kind, storage dtype, float32 arrays and the caller's metadata."""
  config: TransformerConfig
  kind: str
  dtype: str
  arrays: Mapping[str, np.ndarray]   # read from the file on demand (StoredArrays) or held
  metadata: dict[str, str]
  generation_config: dict[str, Any] | None = None


def write(path: str | os.PathLike, arrays: dict[str, np.ndarray], config: TransformerConfig, kind: str = "transformer",
          dtype: str = "float32", metadata: dict[str, str] | None = None, generation_config: dict[str, Any] | None = None) -> None:
  """Write arrays under tfm names with the config and format version in the metadata (atomically)."""
  extra = dict(metadata or {})
  for key, value in extra.items():
    if not isinstance(key, str) or not isinstance(value, str):
      raise WeightsError(f"metadata entry {key!r}: {value!r} is not str -> str; convert values with str() or json.dumps()")
    if key.startswith("tfm."): raise WeightsError(f"metadata key {key!r} is reserved (tfm.*); choose another name")
  header = {"tfm.format_version": str(FORMAT_VERSION), "tfm.kind": kind, "tfm.dtype": dtype,
            "tfm.config": json.dumps(config.to_dict(), sort_keys=True)}
  if generation_config: header["tfm.generation_config"] = json.dumps(generation_config, sort_keys=True)
  write_arrays(path, arrays, {**extra, **header}, dtype)


def read(path: str | os.PathLike) -> WeightFile:
  """Read and check a tfm weight file's header and tensors (storage dtype, finiteness); names and shapes are the loader's."""
  path = os.fspath(path)
  metadata, arrays, codes = read_arrays(path, "tfm weight file")
  version = metadata.get("tfm.format_version")
  if version is None:
    raise WeightsError(f"{path} has no tfm.format_version in its metadata: it is not a tfm weight file. "
                       f"Import foreign checkpoints with tfm.from_pretrained or `tfm convert`")
  if not version.isdigit() or int(version) > FORMAT_VERSION:
    raise WeightsError(f"{path} has format version {version}, newer than this tfm reads ({FORMAT_VERSION}); upgrade tfm")
  kind, dtype = metadata.get("tfm.kind"), metadata.get("tfm.dtype")
  if kind not in KINDS: raise WeightsError(f"{path}: tfm.kind={kind!r} is not one of {', '.join(KINDS)}")
  if dtype not in STORAGE_CODES: raise WeightsError(f"{path}: tfm.dtype={dtype!r} is not one of {', '.join(STORAGE_CODES)}")
  try:
    config = TransformerConfig.from_dict(json.loads(metadata.get("tfm.config", "")))
  except (json.JSONDecodeError, TypeError, ConfigError) as e:
    raise WeightsError(f"{path}: tfm.config in the metadata is not a valid TransformerConfig ({e}); write the file again") from None
  for name in sorted(codes):
    if codes[name] != STORAGE_CODES[dtype]:
      raise WeightsError(f"{path}: tensor {name} is stored as {codes[name]}, the file says every tensor is {dtype} "
                         f"({STORAGE_CODES[dtype]}); write the file again")
  try:
    generation = json.loads(metadata["tfm.generation_config"]) if "tfm.generation_config" in metadata else None
  except json.JSONDecodeError as e:
    raise WeightsError(f"{path}: tfm.generation_config in the metadata is not JSON ({e}); write the file again") from None
  user = {k: v for k, v in metadata.items() if not k.startswith("tfm.")}
  return WeightFile(config, kind, dtype, arrays, user, generation)


def save(model: Transformer, path: str | os.PathLike, metadata: dict[str, str] | None = None, dtype: str = "float32") -> None:
  """Save a Transformer as one safetensors file: its config (and generation_config, if it has one) travels in the
  metadata, a tied matrix is stored once.

  dtype: storage dtype, "float32" (exact), "float16" or "bfloat16" (half the size; `load` widens them again).
  """
  write(path, state_arrays(model), model.config, "transformer", dtype, metadata, getattr(model, "generation_config", None))


def state_arrays(model: Transformer) -> dict[str, np.ndarray]:
  """Every distinct weight as a float32 host array, under its first name (what `save` writes and `assign` takes)."""
  return {name: t.float().numpy() for name, t in unique_state(model).items()}


def copy_to(model: Transformer, device: str) -> Transformer:
  """A copy of model on another device: the same config, weights (in the same dtype) and generation settings."""
  copy = Transformer(model.config, device=device, initialise=False)
  assign(unique_state(copy), state_arrays(model), "the model's own weights", model.generator.weight.dtype)
  if hasattr(model, "generation_config"): copy.generation_config = model.generation_config
  return copy


def model_dtype(dtype: str | DType | None) -> DType:
  """A loader's dtype argument -> the tinygrad dtype the model computes in (None: float32)."""
  if dtype is None: return dtypes.float32
  if isinstance(dtype, DType) and dtype in MODEL_DTYPES.values(): return dtype
  if isinstance(dtype, str) and dtype in MODEL_DTYPES: return MODEL_DTYPES[dtype]
  raise WeightsError(f"dtype={dtype!r} is not supported; choose one of {', '.join(MODEL_DTYPES)} (or None for float32)")


def _read_transformer(path: str | os.PathLike) -> WeightFile:
  wf = read(path)
  if wf.kind != "transformer":
    raise WeightsError(f"{os.fspath(path)} holds {wf.kind} (encoder and decoder stacks without embeddings), not a Transformer; "
                       f"load it with tfm.interop.load_stacks")
  return wf


def load_into(model: Transformer, path: str | os.PathLike) -> Transformer:
  """Replace every weight of model with a file's, all or nothing: the file's config must equal the model's."""
  wf = _read_transformer(path)
  if wf.config != model.config:
    diff = {k: (v, getattr(wf.config, k)) for k, v in model.config.to_dict().items() if getattr(wf.config, k) != v}
    raise WeightsError(f"{os.fspath(path)} was saved from a different config: " +
                       ", ".join(f"{k}: model {a!r}, file {b!r}" for k, (a, b) in diff.items()) + "; use tfm.load(path) instead")
  assign(unique_state(model), wf.arrays, os.fspath(path))
  return model


def assign(state: dict[str, Tensor], arrays: Mapping[str, np.ndarray], source: str, dtype: DType | None = None) -> None:
  """Check every array against state (names, shapes, finite), then replace each tensor's value, in `dtype` (default:
  the tensor's own; converted on the host): one array at a time, so that the arrays and the device weights are never
  all in memory together."""
  check_arrays(arrays, {name: t.shape for name, t in state.items()}, source)
  for name, t in state.items():
    t.replace(to_device(arrays[name], t.device, dtype or t.dtype))   # a direct copy: no kernel to schedule per weight
    # a device may hold the host array until its queue has run the copy (OpenCL does): drain it, so that one array
    # at a time is alive, not all of them
    drain(t.device)


def load(path: str | os.PathLike, device: str | None = None, dtype: str | DType | None = None) -> Transformer:
  """A Transformer from a file written by `save`, checked name by name before any weight is used.

  dtype: the model's compute dtype, float32 when None whatever the storage dtype (float16 is not on every backend).
  """
  compute = model_dtype(dtype)
  wf = _read_transformer(path)
  model = Transformer(wf.config, device=device, initialise=False)
  assign(unique_state(model), wf.arrays, os.fspath(path), compute)
  if wf.generation_config is not None: model.generation_config = wf.generation_config
  return model
