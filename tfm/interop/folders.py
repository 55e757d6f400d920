"""Hugging Face checkpoint folders: which importer reads one, decided by config.json's model_type ("vit": tfm.interop.vit,
"t5" and "mt5": tfm.interop.t5, anything else: tfm.interop.seq2seq, which reads Marian, BART, mBART, Pegasus,
M2M100/NLLB and Whisper and names what tfm reads when the type is another)."""
from __future__ import annotations

import json
import os
from typing import Any

from tfm.errors import InputError
from tfm.interop.mapping import Conversion
from tfm.io import weights


def model_type(folder: str | os.PathLike) -> str | None:
  """config.json's model_type, or None when the folder has no readable one (the importer then says what is wrong)."""
  try:
    with open(os.path.join(os.fspath(folder), "config.json"), encoding="utf-8") as f: config = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  return config.get("model_type") if isinstance(config, dict) else None


def convert_folder(folder: str | os.PathLike) -> Conversion:
  """A checkpoint folder -> tfm arrays and config, through the importer of its model_type."""
  kind = model_type(folder)
  if kind == "vit":
    from tfm.interop.vit import convert_vit
    return convert_vit(folder)
  if kind in ("t5", "mt5"):
    from tfm.interop.t5 import convert
    return convert(folder)
  from tfm.interop.seq2seq import convert
  return convert(folder)


def from_pretrained(folder: str | os.PathLike, device: Any = None, dtype: Any = None, parallel: str | None = None):
  """A tfm model from a Hugging Face checkpoint folder: a VisionTransformer for a ViT (ViTForImageClassification,
  ViTModel), a Transformer for an encoder-decoder one (Marian/opus-mt, BART, mBART, Pegasus, M2M100, NLLB, T5, mT5),
  which carries the checkpoint's decoding defaults (generation_config.json) as `generation_config`, what tfm.generate
  reads. Every tensor is mapped by name and shape, none skipped. dtype: the model's compute dtype (float32 when None),
  device and parallel as in tfm.load."""
  if model_type(folder) == "vit":
    if parallel is not None: raise InputError(f"parallel={parallel!r} is for the translation Transformer; load a ViT on one device")
    from tfm.interop.vit import from_pretrained as vit
    return vit(folder, device, dtype)
  weights.model_dtype(dtype)   # a bad dtype is refused before the folder is read
  conv = convert_folder(folder)
  model = weights.build(conv.config, conv.arrays, os.fspath(folder), device, dtype, parallel)
  model.generation_config = conv.generation_config
  return model
