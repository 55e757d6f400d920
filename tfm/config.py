"""TransformerConfig: the single source of every size in the model, with the paper's presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tfm.errors import ConfigError

ACTIVATIONS = ("relu", "gelu", "swish")
POSITIONAL_LAYOUTS = ("interleaved", "half_split")


@dataclass(frozen=True)
class TransformerConfig:
  """Every size and switch of the encoder-decoder Transformer.

  Defaults are the paper's base model (table 3) with a 37000-token shared vocabulary.
  `positional="interleaved"` is the paper's sin/cos table (sin on even, cos on odd features);
  `"half_split"` puts all sines first, then all cosines (Marian / fairseq).
  `final_norm=None` means "on for pre-norm, off for post-norm".
  """
  vocab_size: int = 37000
  d_model: int = 512
  n_heads: int = 8
  d_ff: int = 2048
  n_encoder_layers: int = 6
  n_decoder_layers: int = 6
  dropout: float = 0.1
  max_len: int = 512
  norm_first: bool = False
  activation: str = "relu"
  layer_norm_eps: float = 1e-5
  scale_embedding: bool = True
  tie_embeddings: bool = True
  positional: str = "interleaved"
  final_norm: bool | None = None
  output_bias: bool = False
  pad_id: int = 0
  bos_id: int = 1
  eos_id: int = 2
  decoder_start_id: int | None = None

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "n_heads", "d_ff", "max_len"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer")
    for name in ("n_encoder_layers", "n_decoder_layers"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{name}={value!r} must be an integer >= 0")
    if self.d_model % self.n_heads != 0:
      raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: "
                        f"each head gets d_model / n_heads features; pick n_heads among the divisors of {self.d_model}")
    if self.d_model % 2 != 0:
      raise ConfigError(f"d_model={self.d_model} must be even: the sinusoidal table pairs a sine with a cosine")
    if not 0.0 <= self.dropout < 1.0:
      raise ConfigError(f"dropout={self.dropout!r} must be in [0, 1)")
    if self.activation not in ACTIVATIONS:
      raise ConfigError(f"activation={self.activation!r} is not supported; choose one of {', '.join(ACTIVATIONS)}")
    if self.positional not in POSITIONAL_LAYOUTS:
      raise ConfigError(f"positional={self.positional!r} is not supported; choose one of {', '.join(POSITIONAL_LAYOUTS)}")
    if not self.layer_norm_eps > 0:
      raise ConfigError(f"layer_norm_eps={self.layer_norm_eps!r} must be > 0")
    for name in ("pad_id", "bos_id", "eos_id", "decoder_start_id"):
      value = getattr(self, name)
      if value is None and name == "decoder_start_id": continue
      if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < self.vocab_size:
        raise ConfigError(f"{name}={value!r} is out of range for vocab_size={self.vocab_size} (must be in [0, {self.vocab_size - 1}])")

  @property
  def head_dim(self) -> int: return self.d_model // self.n_heads

  @property
  def use_final_norm(self) -> bool: return self.norm_first if self.final_norm is None else self.final_norm

  @property
  def start_id(self) -> int:
    """The first decoder input: bos, unless the checkpoint starts from another id (Marian starts from pad)."""
    return self.bos_id if self.decoder_start_id is None else self.decoder_start_id

  @classmethod
  def preset(cls, name: str, **overrides: Any) -> TransformerConfig:
    """A named configuration, with fields overridden: "base" and "big" (the paper's table 3), "tiny" (tests), "small"
    (the bundled model's size), "medium" (the train-step benchmark's)."""
    if name not in PRESETS:
      raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return cls(**{**PRESETS[name], **overrides})

  def replace(self, **changes: Any) -> TransformerConfig: return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]: return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> TransformerConfig:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown: raise ConfigError(f"unknown config field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(known))}")
    return cls(**d)


PRESETS: dict[str, dict[str, Any]] = {
  "base": dict(d_model=512, n_heads=8, d_ff=2048, n_encoder_layers=6, n_decoder_layers=6, dropout=0.1),
  "big": dict(d_model=1024, n_heads=16, d_ff=4096, n_encoder_layers=6, n_decoder_layers=6, dropout=0.3),
  "tiny": dict(vocab_size=64, d_model=32, n_heads=4, d_ff=64, n_encoder_layers=2, n_decoder_layers=2, dropout=0.1, max_len=64),
  # the bundled dates model's size (tfm/assets/README.md: 287k parameters with its 53-token vocabulary)
  "small": dict(d_model=64, n_heads=4, d_ff=256, n_encoder_layers=3, n_decoder_layers=2, dropout=0.0, max_len=48),
  # the train-step benchmark's size (docs/PERFORMANCE.md)
  "medium": dict(vocab_size=1000, d_model=128, n_heads=4, d_ff=512, n_encoder_layers=2, n_decoder_layers=2, dropout=0.0),
}
