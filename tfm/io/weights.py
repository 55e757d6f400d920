"""Weight files: a Transformer to and from safetensors, with its config in the file's metadata.

A tfm weight file (format version 1) holds
  tensors   the state dict under the model's attribute names (`encoder.layers.0.self_attn.q_proj.weight`, ...);
            a tied matrix is stored once, under its first name (`src_embed.weight`): the config's tie_embeddings
            says which names share it
  metadata  tfm.format_version = "1", tfm.kind = "transformer" (or "stacks": encoder and decoder stacks alone, as
            imported from torch.nn.Transformer; or "vit": a VisionTransformer, its config a VisionConfig),
            tfm.config = the model's config as JSON, tfm.dtype = the storage
            dtype of every tensor (float32, float16 or bfloat16; or int8: each Linear weight as I8 rows with a float32
            `NAME.scale` beside it, the generator's own when tied, every other tensor float32), optionally tfm.generation_config (JSON: the
            decoding defaults a checkpoint came with, `model.generation_config`), and any str -> str entries the caller adds;
            tfm.sha256, the checksum of every tensor's stored bytes and every other metadata entry, lets a load refuse a
            file damaged after it was written (files without it load unchecked)

The safetensors layer (checksums, atomic writes, bfloat16, reading one tensor at a time) is tfm.io.stored; `load` peaks
at the model's weights plus its largest tensor.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from tinygrad import Tensor, dtypes
from tinygrad.dtype import DType

from tfm.config import TransformerConfig, VisionConfig
from tfm.errors import ConfigError, InputError, WeightsError
from tfm.nn.linear import LINEAR_WEIGHTS, linear_layers, quantize_rows
from tfm.runtime.memory import drain, like
from tfm.nn.base import unique_state
from tfm.nn.transformer import Transformer
from tfm.io.stored import STORAGE_CODES, check_arrays, read_arrays, write_arrays
from tfm.nn.vit import VisionTransformer

FORMAT_VERSION = 1
KINDS = ("transformer", "stacks", "vit")
MODELS = ("transformer", "vit")   # the kinds tfm.load builds a whole model from
MODEL_DTYPES = {"float32": dtypes.float32, "float16": dtypes.float16, "bfloat16": dtypes.bfloat16}
INT8 = "int8"   # a loader's dtype for int8 Linear weights with float32 activations (Transformer.quantize)


# --- the tfm format ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WeightFile:
  """What a tfm weight file holds: its config, kind, storage dtype, float32 arrays and the caller's metadata."""
  config: TransformerConfig | VisionConfig
  kind: str
  dtype: str
  arrays: Mapping[str, np.ndarray]   # read from the file on demand (StoredArrays) or held
  metadata: dict[str, str]
  generation_config: dict[str, Any] | None = None


def write(path: str | os.PathLike, arrays: dict[str, np.ndarray], config: TransformerConfig | VisionConfig, kind: str = "transformer",
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
  if dtype == INT8:
    if kind != "transformer":
      raise WeightsError(f"int8 files are for translation models, not {kind}; save it as float32, float16 or bfloat16")
    arrays = int8_arrays(config, arrays)
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
  config_class = VisionConfig if kind == "vit" else TransformerConfig
  try:
    config = config_class.from_dict(json.loads(metadata.get("tfm.config", "")))
  except (json.JSONDecodeError, TypeError, ConfigError) as e:
    raise WeightsError(f"{path}: tfm.config in the metadata is not a valid {config_class.__name__} ({e}); write the file again") from None
  for name in sorted(codes):
    want = "I8" if dtype == INT8 and scale_name(name) in codes else STORAGE_CODES[dtype]
    if codes[name] != want:
      raise WeightsError(f"{path}: tensor {name} is stored as {codes[name]}, where {dtype} files store it as {want}; "
                         f"write the file again")
  try:
    generation = json.loads(metadata["tfm.generation_config"]) if "tfm.generation_config" in metadata else None
  except json.JSONDecodeError as e:
    raise WeightsError(f"{path}: tfm.generation_config in the metadata is not JSON ({e}); write the file again") from None
  user = {k: v for k, v in metadata.items() if not k.startswith("tfm.")}
  return WeightFile(config, kind, dtype, arrays, user, generation)


def save(model: Transformer | VisionTransformer, path: str | os.PathLike, metadata: dict[str, str] | None = None,
         dtype: str = "float32") -> None:
  """Save a Transformer (or a VisionTransformer) as one safetensors file: its config (and generation_config, if it has
  one) travels in the metadata, a tied matrix is stored once.

  dtype: storage dtype, "float32" (exact), "float16" or "bfloat16" (half the size; `load` widens them again), or
  "int8" (the Linear weights as int8 rows with float32 scales, the rest float32; `load` gives an int8 model). An
  int8 model (Transformer.quantize) is saved as int8 whatever dtype says, unless it says a float dtype: refused.
  """
  if getattr(model, "quantized", False):
    if dtype not in ("float32", INT8):
      raise WeightsError(f"an int8 model is saved as int8, not {dtype}: its float weights are gone; save the float32 model instead")
    dtype = INT8
  kind = "vit" if isinstance(model, VisionTransformer) else "transformer"
  write(path, state_arrays(model), model.config, kind, dtype, metadata, getattr(model, "generation_config", None))


def state_arrays(model: Transformer | VisionTransformer) -> dict[str, np.ndarray]:
  """Every distinct weight as a float32 host array (an int8 model's int8 weights as int8 ones), under its first name
  (what `save` writes and `assign` takes)."""
  return {name: t.numpy() if t.dtype == dtypes.int8 else t.float().numpy() for name, t in unique_state(model).items()}


def build(config: TransformerConfig | VisionConfig, arrays: Mapping[str, np.ndarray], source: str, device: Any = None,
          dtype: str | DType | None = None, parallel: str | None = None) -> Transformer | VisionTransformer:
  """A Transformer of config (a VisionTransformer for a VisionConfig) on device with the given weights (name -> array,
  checked as `assign` checks them), in dtype (model_dtype; default float32): no initial weights drawn, no kernel run.
  dtype "int8" builds it in float32, then quantizes its Linear layers (Transformer.quantize). On several devices,
  `parallel` is how the Transformer is split over them (tfm.runtime.placement)."""
  if dtype == INT8 and isinstance(config, VisionConfig):
    raise WeightsError("dtype='int8' is for translation models; load a Vision Transformer in float32, float16 or bfloat16")
  if isinstance(config, VisionConfig):
    if parallel is not None: raise InputError(f"parallel={parallel!r} is for the translation Transformer; load a Vision Transformer on one device")
    model: Transformer | VisionTransformer = VisionTransformer(config, device=device, initialise=False)
  else: model = Transformer(config, device=device, initialise=False, parallel=parallel)
  if dtype == INT8: _assign_int8(model, arrays, source)
  else: assign(unique_state(model), arrays, source, model_dtype(dtype))
  return model


def _assign_int8(model: Transformer, arrays: Mapping[str, np.ndarray], source: str) -> None:
  """`assign` for an int8 model, from float arrays (each Linear weight quantized from its host array, never on the
  device in float32) or from an int8 file's (int8 rows with their `.scale`s, and the generator's own when tied); the
  embeddings and every other tensor are copied in float32."""
  state = unique_state(model)
  owner = {id(layer.weight): layer for layer in linear_layers(model)}
  embeddings = {id(model.src_embed.weight), id(model.tgt_embed.weight)}
  names = {id(model.generator.weight): "generator.weight"} if id(model.generator.weight) in embeddings else {}
  quantized = any(name.endswith(".scale") for name in arrays)
  expected = {name: tuple(t.shape) for name, t in state.items()}
  if quantized:
    for t in owner.values():
      weight = names.get(id(t.weight), next(n for n, s in state.items() if s is t.weight))
      expected[weight], expected[scale_name(weight)] = tuple(t.weight.shape), (t.weight.shape[0],)
  check_arrays(arrays, expected, source)
  for name, t in state.items():
    if id(t) in owner:
      layer = owner[id(t)]
      weight = names.get(id(t), name)
      if quantized:
        rows = arrays[weight]
        if np.abs(rows).max() > 127 or not np.array_equal(rows, np.rint(rows)):
          raise WeightsError(f"{source}: tensor {weight} is not int8 rows (integers in [-127, 127]); write the file again")
        layer.set_int8(rows, arrays[scale_name(weight)])
      else: layer.quantize(arrays[name])
    if id(t) not in owner or id(t) in embeddings: t.replace(like(arrays[name], t, dtypes.float32))
    drain(t.device)


def scale_name(weight: str) -> str:
  """The name of an int8 weight's row scales in a file: `generator.weight` -> `generator.scale`."""
  return weight[:-len("weight")] + "scale" if weight.endswith(".weight") else weight + ".scale"


def int8_twin(config: TransformerConfig, arrays: Mapping[str, np.ndarray]) -> tuple[TransformerConfig, dict[str, np.ndarray]]:
  """The float config and arrays that compute exactly what the int8 model of `arrays` computes: int8_arrays' rows times
  their scales, the generator its own matrix (untied). What `tfm compare --dtype int8` gives the float64 oracle, so
  that its tolerance measures a backend's arithmetic, not the quantization."""
  quantized = int8_arrays(config, arrays)
  out = {name: a for name, a in quantized.items() if not name.endswith(".scale")}
  for name, a in out.items():
    if np.asarray(a).dtype == np.int8: out[name] = a.astype(np.float32) * quantized[scale_name(name)][:, None]
  if config.tie_embeddings: out["tgt_embed.weight"] = arrays["src_embed.weight"]
  return config.replace(tie_embeddings=False), out


def int8_arrays(config: TransformerConfig, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A float model's arrays as an int8 file holds them: each Linear weight as int8 rows (quantize_rows) with its
  `.scale`, the generator's own when it is tied to the embedding; arrays already int8 (an int8 model's) as they are."""
  out = dict(arrays)
  weights = [n for n in arrays if n.endswith(LINEAR_WEIGHTS) or n == "generator.weight"]
  if config.tie_embeddings and "generator.weight" not in arrays: weights.append("generator.weight")
  for name in weights:
    if np.asarray(out.get(name)).dtype == np.int8: continue
    out[name], out[scale_name(name)] = quantize_rows(arrays[name] if name in arrays else arrays["src_embed.weight"])
  return out


def copy_to(model: Transformer | VisionTransformer, device: Any, parallel: str | None = None) -> Transformer | VisionTransformer:
  """A copy of model on another device (or devices, split as `parallel` says): the same config, weights (in the same
  dtype) and generation settings."""
  dtype = INT8 if getattr(model, "quantized", False) else model.parameters()[0].dtype
  copy = build(model.config, state_arrays(model), "the model's own weights", device, dtype, parallel)
  if hasattr(model, "generation_config"): copy.generation_config = model.generation_config
  return copy


def model_dtype(dtype: str | DType | None) -> DType:
  """A loader's dtype argument -> the tinygrad dtype the model computes in (None and "int8": float32)."""
  if dtype is None or dtype == INT8: return dtypes.float32
  if isinstance(dtype, DType) and dtype in MODEL_DTYPES.values(): return dtype
  if isinstance(dtype, str) and dtype in MODEL_DTYPES: return MODEL_DTYPES[dtype]
  raise WeightsError(f"dtype={dtype!r} is not supported; choose one of {', '.join(MODEL_DTYPES)}, {INT8} (or None for float32)")


def _read_transformer(path: str | os.PathLike) -> WeightFile:
  wf = read(path)
  if wf.kind not in MODELS:
    raise WeightsError(f"{os.fspath(path)} holds {wf.kind} (encoder and decoder stacks without embeddings), not a Transformer; "
                       f"load it with tfm.interop.load_stacks")
  return wf


def load_into(model: Transformer | VisionTransformer, path: str | os.PathLike) -> Transformer | VisionTransformer:
  """Replace every weight of model with a file's, all or nothing: the file's config must equal the model's."""
  wf = _read_transformer(path)
  if wf.config != model.config:
    diff = {k: (v, getattr(wf.config, k)) for k, v in model.config.to_dict().items() if getattr(wf.config, k) != v}
    raise WeightsError(f"{os.fspath(path)} was saved from a different config: " +
                       ", ".join(f"{k}: model {a!r}, file {b!r}" for k, (a, b) in diff.items()) + "; use tfm.load(path) instead")
  if (wf.dtype == INT8) != bool(getattr(model, "quantized", False)):
    raise WeightsError(f"{os.fspath(path)} holds {'int8' if wf.dtype == INT8 else 'float'} weights and the model is "
                       f"{'int8' if getattr(model, 'quantized', False) else 'float'}; use tfm.load(path) instead")
  assign(unique_state(model), wf.arrays, os.fspath(path))
  return model


def assign(state: dict[str, Tensor], arrays: Mapping[str, np.ndarray], source: str, dtype: DType | None = None) -> None:
  """Check every array against state (names, shapes, finite), then replace each tensor's value, in `dtype` (default:
  the tensor's own; converted on the host): one array at a time, so that the arrays and the device weights are never
  all in memory together."""
  check_arrays(arrays, {name: t.shape for name, t in state.items()}, source)
  for name, t in state.items():
    t.replace(like(arrays[name], t, dtype))   # a direct copy: no kernel to schedule per weight
    # a device may hold the host array until its queue has run the copy (OpenCL does): drain it, so that one array
    # at a time is alive, not all of them
    drain(t.device)


def load(path: str | os.PathLike, device: Any = None, dtype: str | DType | None = None,
         parallel: str | None = None) -> Transformer | VisionTransformer:
  """A Transformer (or, for a file of kind "vit", a VisionTransformer) from a file written by `save`, checked name by
  name before any weight is used.

  dtype: the model's compute dtype, float32 when None whatever the storage dtype (float16 is not on every backend);
  "int8" for int8 Linear weights over float32 activations (Transformer.quantize).
  device: one backend ("CL") or several devices ("CPU*2", ("CUDA:0", "CUDA:1")), split as `parallel` says
  ("data" or "tensor", tfm.runtime.placement; None: by size).
  """
  model_dtype(dtype)   # a bad dtype is refused before the file is read
  wf = _read_transformer(path)
  if wf.dtype == INT8:
    if dtype not in (None, INT8):
      raise WeightsError(f"{os.fspath(path)} holds int8 weights: load it with dtype='int8' (or None); for {dtype}, "
                         f"load the float file it was made from")
    dtype = INT8
  model = build(wf.config, wf.arrays, os.fspath(path), device, dtype, parallel)
  if wf.generation_config is not None: model.generation_config = wf.generation_config
  return model
