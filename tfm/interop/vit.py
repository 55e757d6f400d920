"""Import Vision Transformer checkpoints in the Hugging Face layout (ViTForImageClassification, ViTModel): config.json
(model_type "vit") + model.safetensors, and preprocessor_config.json when the folder has one.

A Hugging Face ViT in tfm's terms (tfm.nn.vit): the Conv2d patch projection (d, C, p, p) is the patch embedding's
Linear weight (d, C*p*p), reshaped; class token, position embeddings, the pre-norm layers (layernorm_before,
attention, layernorm_after, MLP), the final layernorm and the classifier map name for name. `qkv_bias: false` becomes
zero query, key and value biases (the same function). What tfm's ViT does not compute is refused with the reason:
another image size than the position embeddings were made for (Hugging Face interpolates them on request), a pooler
(dense + tanh on the class token), a masked-image-modeling decoder, an activation other than gelu, relu or silu,
rectangular images or patches, a patch size that does not tile the image.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from tfm.files import read_json
from tfm.io import stored

from tfm.io import weights
from tfm.config import VisionConfig
from tfm.errors import ConfigError, WeightsError
from tfm.interop.mapping import HF_ACTIVATIONS, Conversion, checkpoint_file
from tfm.nn.vit import VisionTransformer

# ViTConfig's defaults for the fields read here, for config.json files that leave some out
DEFAULTS: dict[str, Any] = {
  "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
  "hidden_dropout_prob": 0.0, "layer_norm_eps": 1e-12, "image_size": 224, "patch_size": 16, "num_channels": 3,
  "qkv_bias": True,
}
ARCHITECTURES = ("ViTForImageClassification", "ViTModel")
# a layer's tensors: Hugging Face's name under encoder.layer.N -> tfm's under encoder.layers.N
LAYER_NAMES = {
  "attention.attention.query": "self_attn.q_proj", "attention.attention.key": "self_attn.k_proj",
  "attention.attention.value": "self_attn.v_proj", "attention.output.dense": "self_attn.out_proj",
  "layernorm_before": "self_attn_layer_norm", "intermediate.dense": "ffn.fc1", "output.dense": "ffn.fc2",
  "layernorm_after": "final_layer_norm",
}
SAVE_AS_SAFETENSORS = ("from transformers import AutoModel\n"
                       "    AutoModel.from_pretrained('{dir}').save_pretrained('{dir}', safe_serialization=True)")


def _square(hf: dict[str, Any], name: str, path: str) -> int:
  """image_size / patch_size as one int: Hugging Face allows [h, w] pairs; tfm's ViT takes square ones."""
  value = hf[name]
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise WeightsError(f"{path} has {name}={value}; tfm's ViT takes square images and patches (one number, or [n, n])")
    value = value[0]
  if not isinstance(value, int) or isinstance(value, bool):
    raise WeightsError(f"{path} has {name}={value!r}; it must be a positive integer")
  return value


def _labels(hf: dict[str, Any], n: int, path: str) -> tuple[str, ...]:
  """id2label as a tuple indexed by class id, when config.json names all n classes."""
  id2label = hf.get("id2label") or {}
  try:
    names = {int(k): str(v) for k, v in id2label.items()}
  except (AttributeError, ValueError):
    raise WeightsError(f"{path}: id2label must map class ids (\"0\", \"1\", ...) to names, got {id2label!r}") from None
  return tuple(names[i] for i in range(n)) if set(names) == set(range(n)) else ()


def _preprocessing(folder: str, channels: int) -> dict[str, tuple[float, ...]]:
  """image_mean / image_std from preprocessor_config.json (ViTImageProcessor's), when the folder has one."""
  path = os.path.join(folder, "preprocessor_config.json")
  if not os.path.isfile(path): return {}
  pre = read_json(path)
  if not isinstance(pre, dict): raise WeightsError(f"{path} must hold a JSON object")
  if pre.get("do_rescale", True) and not np.isclose(pre.get("rescale_factor", 1 / 255), 1 / 255):
    raise WeightsError(f"{path} has rescale_factor={pre['rescale_factor']}; tfm scales 8-bit pixels to [0, 1] (1/255)")
  if not pre.get("do_normalize", True): return {"image_mean": (0.0,) * channels, "image_std": (1.0,) * channels}
  out = {}
  for name in ("image_mean", "image_std"):
    value = pre.get(name, [0.5] * channels)
    value = [value] * channels if isinstance(value, (int, float)) else list(value)
    if len(value) != channels and len(set(value)) == 1: value = value[:1] * channels   # one value for every channel
    if len(value) != channels:
      raise WeightsError(f"{path} has {name}={value} for {len(value)} channels, but the model takes {channels}")
    out[name] = tuple(float(v) for v in value)
  return out


def vit_config(hf: dict[str, Any], num_labels: int, path: str) -> VisionConfig:
  """A ViT config.json (with ViTConfig's defaults) -> the VisionConfig that computes the same function."""
  if hf["hidden_act"] not in HF_ACTIVATIONS:
    raise WeightsError(f"{path} has hidden_act={hf['hidden_act']!r}; tfm's ViT computes {', '.join(HF_ACTIVATIONS)} "
                       f"(gelu as the exact erf form)")
  size, patch = _square(hf, "image_size", path), _square(hf, "patch_size", path)
  try:
    return VisionConfig(image_size=size, patch_size=patch, num_channels=hf["num_channels"], num_labels=num_labels,
                        d_model=hf["hidden_size"], n_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
                        n_layers=hf["num_hidden_layers"], dropout=float(hf["hidden_dropout_prob"]),
                        activation=HF_ACTIVATIONS[hf["hidden_act"]], layer_norm_eps=float(hf["layer_norm_eps"]),
                        labels=_labels(hf, num_labels, path))
  except ConfigError as e:
    raise WeightsError(f"{path} does not describe a ViT tfm can build: {e}") from None


def _expected(config: VisionConfig, prefix: str, qkv_bias: bool) -> dict[str, tuple[int, ...]]:
  """Every tensor of a Hugging Face ViT checkpoint of this config with its shape, under Hugging Face's names."""
  d, ff, c, p = config.d_model, config.d_ff, config.num_channels, config.patch_size
  shapes = {"attention.attention.query": (d, d), "attention.attention.key": (d, d), "attention.attention.value": (d, d),
            "attention.output.dense": (d, d), "layernorm_before": None, "intermediate.dense": (ff, d), "output.dense": (d, ff),
            "layernorm_after": None}
  out = {f"{prefix}embeddings.cls_token": (1, 1, d), f"{prefix}embeddings.position_embeddings": (1, config.num_patches + 1, d),
         f"{prefix}embeddings.patch_embeddings.projection.weight": (d, c, p, p),
         f"{prefix}embeddings.patch_embeddings.projection.bias": (d,),
         f"{prefix}layernorm.weight": (d,), f"{prefix}layernorm.bias": (d,)}
  for i in range(config.n_layers):
    for name, shape in shapes.items():
      base = f"{prefix}encoder.layer.{i}.{name}"
      out[f"{base}.weight"] = shape or (d,)
      if qkv_bias or not name.startswith("attention.attention."): out[f"{base}.bias"] = (shape or (d,))[:1]
  if config.num_labels: out.update({"classifier.weight": (config.num_labels, d), "classifier.bias": (config.num_labels,)})
  return out


def _tfm_name(name: str, prefix: str) -> str:
  """vit.encoder.layer.0.intermediate.dense.weight -> encoder.layers.0.ffn.fc1.weight, and the rest of the names."""
  name = name.removeprefix(prefix)
  if name.startswith("encoder.layer."):
    _, _, index, rest = name.split(".", 3)
    module, _, param = rest.rpartition(".")
    return f"encoder.layers.{index}.{LAYER_NAMES[module]}.{param}"
  return {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "position_embeddings",
          "embeddings.patch_embeddings.projection.weight": "patch_embed.weight",
          "embeddings.patch_embeddings.projection.bias": "patch_embed.bias",
          "layernorm.weight": "encoder.layer_norm.weight", "layernorm.bias": "encoder.layer_norm.bias"}.get(name, name)


def _refuse_heads(arrays: dict[str, np.ndarray], raw: dict[str, Any], path: str, config_path: str) -> None:
  """The checkpoint parts tfm's ViT does not compute, each refused with what to do instead."""
  architectures = raw.get("architectures") or []
  other = [a for a in architectures if a not in ARCHITECTURES]
  if other:
    raise WeightsError(f"{config_path} is a {other[0]} checkpoint; tfm imports {' and '.join(ARCHITECTURES)} "
                       f"(a classification head on the class token, or none)")
  if any(n.startswith(("pooler.", "vit.pooler.")) for n in arrays):
    raise WeightsError(f"{path} has a pooler (pooler.dense: dense + tanh on the class token), which tfm's ViT does not "
                       f"compute: it classifies from the class token (ViTForImageClassification) or returns every token's "
                       f"state (features). Save the encoder alone with ViTModel.from_pretrained(dir, add_pooling_layer=False)"
                       f".save_pretrained(dir)")
  if any(n.endswith("embeddings.mask_token") for n in arrays):
    raise WeightsError(f"{path} has a mask token (masked image modeling), which tfm's ViT does not use; import a "
                       f"ViTForImageClassification or ViTModel checkpoint")


def convert_vit(folder: str | os.PathLike) -> Conversion:
  """A Hugging Face ViT checkpoint folder -> a tfm VisionTransformer's arrays and config, every name and shape checked."""
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise WeightsError(f"{folder} is not a directory; give a ViT checkpoint folder (config.json + model.safetensors)")
  config_path = os.path.join(folder, "config.json")
  if not os.path.isfile(config_path):
    raise WeightsError(f"{folder} has no config.json; give a ViT checkpoint folder, as save_pretrained writes it")
  raw = read_json(config_path)
  if not isinstance(raw, dict) or raw.get("model_type") != "vit":
    kind = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
    raise WeightsError(f"{config_path} describes a {kind!r} model, not a ViT (model_type 'vit')")
  hf = {**DEFAULTS, **raw}
  path = checkpoint_file(folder, SAVE_AS_SAFETENSORS)
  arrays = dict(stored.read_arrays(path, "ViT checkpoint")[1])
  _refuse_heads(arrays, raw, path, config_path)
  prefix = "vit." if any(n.startswith("vit.") for n in arrays) else ""
  head = arrays.get("classifier.weight")
  config = vit_config(hf, 0 if head is None else int(head.shape[0]), config_path)
  pre = _preprocessing(folder, config.num_channels)
  if pre: config = config.replace(**pre)
  positions = arrays.get(f"{prefix}embeddings.position_embeddings")
  if positions is not None and positions.shape[1:2] != (config.num_patches + 1,):
    raise WeightsError(f"{path}: position_embeddings has shape {positions.shape}, made for {positions.shape[1] - 1} patches; "
                       f"config.json's image_size={config.image_size} and patch_size={config.patch_size} give "
                       f"{config.num_patches}. tfm does not interpolate position embeddings to another image size")
  qkv_bias = bool(hf["qkv_bias"])
  stored.check_arrays(arrays, _expected(config, prefix, qkv_bias), path)

  conv = Conversion(config, "vit", {})
  for name, value in arrays.items():
    target = _tfm_name(name, prefix)
    if name.endswith("patch_embeddings.projection.weight"):
      value = value.reshape(config.d_model, config.patch_dim)   # (d, C, p, p) -> (d, C*p*p): a patch flattened channel-major
      target += " (reshaped to (d, C*p*p))"
    conv.arrays[target.split(" ")[0]] = value
    conv.mapped.append((name, target))
  if not qkv_bias:
    for i in range(config.n_layers):
      for p in "qkv": conv.arrays[f"encoder.layers.{i}.self_attn.{p}_proj.bias"] = np.zeros(config.d_model, np.float32)
    conv.notes.append("qkv_bias is false: the query, key and value projections get zero biases (the same function)")
  conv.notes.append(f"{'ViTForImageClassification' if config.num_labels else 'ViTModel'}: {config.num_patches} patches of "
                    f"{config.patch_size}x{config.patch_size}x{config.num_channels}, pre-norm, activation {config.activation}, "
                    f"layer_norm_eps {config.layer_norm_eps:g}; pixels normalised with mean {config.image_mean}, std {config.image_std}")
  return conv


def from_pretrained(folder: str | os.PathLike, device: str | None = None, dtype: Any = None) -> VisionTransformer:
  """A tfm VisionTransformer with a Hugging Face ViT checkpoint's weights (config.json + model.safetensors).

  Every tensor of the file is mapped by name and shape; a name tfm does not know is an error, never skipped.
  dtype: the model's compute dtype (float32 when None), as in tfm.load.
  """
  weights.model_dtype(dtype)   # a bad dtype is refused before the folder is read
  conv = convert_vit(folder)
  return weights.build(conv.config, conv.arrays, os.fspath(folder), device, dtype)
