"""What an importer produced: tfm-named arrays with the config they fit, and a record of every name it mapped."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from tfm.config import TransformerConfig


@dataclass
class Conversion:
  """A foreign checkpoint turned into tfm names: `kind` is "transformer" (a whole model) or "stacks" (encoder/decoder)."""
  config: TransformerConfig
  kind: str
  arrays: dict[str, np.ndarray]
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
