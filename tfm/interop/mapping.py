"""What an importer produced: tfm-named arrays with the config they fit, and a record of every name it mapped; and
what the Hugging Face importers share: finding a folder's model.safetensors."""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import MutableMapping

import numpy as np

from tfm.config import TransformerConfig, VisionConfig
from tfm.errors import WeightsError

# Hugging Face's activation names (hidden_act, activation_function) -> tfm's config.activation
HF_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "swish": "swish", "silu": "swish"}


@dataclass
class Conversion:
  """A foreign checkpoint turned into tfm names: `kind` is "transformer" (a whole model), "stacks" (encoder/decoder)
  or "vit" (a VisionTransformer, whose config is a VisionConfig)."""
  config: TransformerConfig | VisionConfig
  kind: str
  arrays: MutableMapping[str, np.ndarray]   # a dict, or tensors of a file read when asked for (tfm.io.stored.Pending)
  mapped: list[tuple[str, str]] = field(default_factory=list)  # (source name, tfm name(s)), one pair per source tensor
  notes: list[str] = field(default_factory=list)  # what was checked and not loaded, and why
  generation_config: dict | None = None  # decoding defaults the checkpoint came with (generation_config.json keys)

  def summary(self) -> str:
    """One line per mapping rule (layer numbers folded into N, a module's weight and bias on one line, with a count),
    then the notes."""
    layered = Counter((_layers(src), _layers(dst)) for src, dst in self.mapped)
    rules: Counter = Counter()
    for (src, dst), n in layered.items():
      twin = (_swap(src), _swap(dst))
      rules[(_pair(src), _pair(dst)) if twin != (src, dst) and twin in layered else (src, dst)] += n
    width = max((len(src) for src, _ in rules), default=0)
    lines = [f"mapped {len({src for src, _ in self.mapped})} source tensors to {len(self.arrays)} tfm tensors "
             f"({sum(a.size for a in self.arrays.values()):,} numbers):"]
    lines += [f"  {src:<{width}} -> {dst}" + (f"  (x{n})" if n > 1 else "") for (src, dst), n in rules.items()]
    lines += [f"  note: {note}" for note in self.notes]
    return "\n".join(lines)


def _layers(name: str) -> str:
  """encoder.layers.3.fc1.bias -> encoder.layers.N.fc1.bias: one rule for every layer."""
  return re.sub(r"\.\d+\.", ".N.", name)


_WEIGHT_OR_BIAS = re.compile(r"(?<=[._])(weight|bias)\b")


def _swap(name: str) -> str:
  """encoder.layers.N.fc1.bias -> encoder.layers.N.fc1.weight, and back: the other half of a module's pair."""
  return _WEIGHT_OR_BIAS.sub(lambda m: "bias" if m.group(1) == "weight" else "weight", name)


def _pair(name: str) -> str:
  """encoder.layers.N.fc1.bias -> encoder.layers.N.fc1.{weight,bias}."""
  return _WEIGHT_OR_BIAS.sub("{weight,bias}", name)


def checkpoint_file(folder: str, save_as: str) -> str:
  """A Hugging Face folder's model.safetensors, or an error that says what the folder holds instead and, for a pickle
  or another framework's file, the transformers lines (`save_as`, formatted with dir=folder) that convert it once."""
  path = os.path.join(folder, "model.safetensors")
  if os.path.isfile(path): return path
  if os.path.isfile(os.path.join(folder, "model.safetensors.index.json")):
    raise WeightsError(f"{folder} holds a sharded checkpoint (model.safetensors.index.json); save it as one file with "
                       f"save_pretrained(..., max_shard_size='100GB')")
  if any(os.path.isfile(os.path.join(folder, n)) for n in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")):
    raise WeightsError(f"{folder} has its weights as a pickle (pytorch_model.bin) or another framework's file, which tfm does "
                       f"not read (a pickle can run code). Convert it to model.safetensors once, where transformers is installed:\n"
                       f"    {save_as.format(dir=folder)}")
  raise WeightsError(f"{folder} has no model.safetensors (it holds: {', '.join(sorted(os.listdir(folder))) or 'nothing'})")
