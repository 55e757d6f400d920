"""TransformerConfig and VisionConfig: the single source of every size in a model, with named presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from tfm.errors import ConfigError

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swish")
NORMS = ("layer", "rms")
POSITIONAL_LAYOUTS = ("interleaved", "half_split", "m2m100", "learned", "relative")


C = TypeVar("C", bound="Fields")


class Fields:
  """What every config does with its fields: check the encoder's, replace some, to and from a dict (unknown fields
  are named), and build a named preset. Subclasses are frozen dataclasses with d_model, n_heads, dropout, activation
  and layer_norm_eps (the encoder stack reads these from either config)."""
  PRESETS: ClassVar[dict[str, dict[str, Any]]]
  PRESET_KIND: ClassVar[str]
  d_model: int
  n_heads: int
  # what an encoder layer reads that only TransformerConfig sets otherwise (T5's switches): the paper's choices here
  norm: str = "layer"
  linear_bias: bool = True
  scale_attention: bool = True
  gated_ffn: bool = False
  d_head: int | None = None

  def replace(self: C, **changes: Any) -> C: return dataclasses.replace(self, **changes)

  def check_integers(self, positive: tuple[str, ...], counts: tuple[str, ...]) -> None:
    """Sizes must be positive integers and counts (of layers, of labels) integers >= 0: else an error naming the field."""
    for names, least, what in ((positive, 1, "a positive integer"), (counts, 0, "an integer >= 0")):
      for name in names:
        value = getattr(self, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < least: raise ConfigError(f"{name}={value!r} must be {what}")

  def check_encoder(self) -> None:
    """The fields every encoder layer reads: heads that divide d_model, a dropout rate, an activation, an epsilon."""
    if self.d_head is None and self.d_model % self.n_heads != 0:
      raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: "
                        f"each head gets d_model / n_heads features; pick n_heads among the divisors of {self.d_model}")
    if not 0.0 <= self.dropout < 1.0: raise ConfigError(f"dropout={self.dropout!r} must be in [0, 1)")
    if self.norm not in NORMS: raise ConfigError(f"norm={self.norm!r} is not supported; choose one of {', '.join(NORMS)}")
    if self.activation not in ACTIVATIONS:
      raise ConfigError(f"activation={self.activation!r} is not supported; choose one of {', '.join(ACTIVATIONS)}")
    if not self.layer_norm_eps > 0: raise ConfigError(f"layer_norm_eps={self.layer_norm_eps!r} must be > 0")

  @property
  def head_dim(self) -> int:
    """Features per head: d_model / n_heads, unless d_head sets it (T5's d_kv: n_heads x d_head may differ from d_model)."""
    return self.d_model // self.n_heads if self.d_head is None else self.d_head

  def to_dict(self) -> dict[str, Any]: return dataclasses.asdict(self)

  @classmethod
  def preset(cls: type[C], name: str, **overrides: Any) -> C:
    """A named configuration (the class's PRESETS), with fields overridden."""
    if name not in cls.PRESETS:
      raise ConfigError(f"unknown {cls.PRESET_KIND} {name!r}; choose one of {', '.join(cls.PRESETS)}")
    return cls(**{**cls.PRESETS[name], **overrides})

  @classmethod
  def from_dict(cls: type[C], d: dict[str, Any]) -> C:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown: raise ConfigError(f"unknown config field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(known))}")
    return cls(**d)


@dataclass(frozen=True)
class TransformerConfig(Fields):
  """Every size and switch of the encoder-decoder Transformer.

  Defaults are the paper's base model (table 3) with a 37000-token shared vocabulary.
  `positional="interleaved"` is the paper's sin/cos table (sin on even, cos on odd features);
  `"half_split"` puts all sines first, then all cosines (Marian, Pegasus); `"m2m100"` is half-split with the
  frequencies 10000^(-i / (d/2 - 1)) (M2M100, NLLB); `"learned"` is a trained table per stack (BART, mBART).
  `position_offset`: the table row of position 0 (M2M100 and BART start at row 2); the table has max_len + offset rows.
  `embed_norm`: a LayerNorm over embeddings plus positions, one per stack (BART's layernorm_embedding).
  `final_norm=None` means "on for pre-norm, off for post-norm".

  T5's differences: `positional="relative"` adds no positions to the embeddings but a learned bias per head to the
  attention scores, looked up by the bucket of the key's distance from the query (`relative_buckets` buckets, exact up to
  half of them, logarithmic up to `relative_max_distance`; one table per stack, shared by its layers, bidirectional in
  the encoder); `norm="rms"` (no mean subtracted, no bias); `linear_bias=False`; `scale_attention=False` (no
  1/sqrt(d_head)); `gated_ffn` (fc2(act(fc1 x) * gate x)); `d_head` (n_heads x d_head need not be d_model);
  `scale_output` (the decoder's output times d_model^-0.5 before a tied output layer); activation "gelu_tanh".

  Whisper's: `n_mels` > 0 makes the encoder's input a log-mel spectrogram (batch, n_mels, 2 x max_source_len frames)
  through two convolutions (the second of stride 2) and gelu, instead of token ids; `max_source_len` is then the
  encoder's positions (its learned table's rows), `max_len` the decoder's.
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
  position_offset: int = 0
  embed_norm: bool = False
  relative_buckets: int = 32
  relative_max_distance: int = 128
  norm: str = "layer"
  linear_bias: bool = True
  scale_attention: bool = True
  gated_ffn: bool = False
  d_head: int | None = None
  scale_output: bool = False
  n_mels: int = 0
  max_source_len: int | None = None
  final_norm: bool | None = None
  output_bias: bool = False
  pad_id: int = 0
  bos_id: int = 1
  eos_id: int = 2
  decoder_start_id: int | None = None

  def __post_init__(self):
    self.check_integers(("vocab_size", "d_model", "n_heads", "d_ff", "max_len"), ("n_encoder_layers", "n_decoder_layers", "position_offset"))
    self.check_integers(("relative_buckets", "relative_max_distance") + (() if self.d_head is None else ("d_head",))
                        + (() if self.max_source_len is None else ("max_source_len",)), ("n_mels",))
    if self.n_mels and self.max_source_len is None:
      raise ConfigError(f"n_mels={self.n_mels} (an audio encoder) needs max_source_len: the encoder's positions, frames / 2")
    self.check_encoder()
    if self.d_model % 2 != 0:
      raise ConfigError(f"d_model={self.d_model} must be even: the sinusoidal table pairs a sine with a cosine")
    if self.positional not in POSITIONAL_LAYOUTS:
      raise ConfigError(f"positional={self.positional!r} is not supported; choose one of {', '.join(POSITIONAL_LAYOUTS)}")
    for name in ("pad_id", "bos_id", "eos_id", "decoder_start_id"):
      value = getattr(self, name)
      if value is None and name == "decoder_start_id": continue
      if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < self.vocab_size:
        raise ConfigError(f"{name}={value!r} is out of range for vocab_size={self.vocab_size} (must be in [0, {self.vocab_size - 1}])")

  @property
  def use_final_norm(self) -> bool: return self.norm_first if self.final_norm is None else self.final_norm

  @property
  def source_positions(self) -> int:
    """Rows of the encoder's position table: max_source_len where set (an audio encoder's frames), else max_len."""
    return self.max_len if self.max_source_len is None else self.max_source_len

  @property
  def start_id(self) -> int:
    """The first decoder input: bos, unless the checkpoint starts from another id (Marian starts from pad)."""
    return self.bos_id if self.decoder_start_id is None else self.decoder_start_id


# "base" and "big" (the paper's table 3), "tiny" (tests), "small" (the bundled model's size), "medium" (the train-step
# benchmark's)
PRESETS: dict[str, dict[str, Any]] = {
  "base": dict(d_model=512, n_heads=8, d_ff=2048, n_encoder_layers=6, n_decoder_layers=6, dropout=0.1),
  "big": dict(d_model=1024, n_heads=16, d_ff=4096, n_encoder_layers=6, n_decoder_layers=6, dropout=0.3),
  "tiny": dict(vocab_size=64, d_model=32, n_heads=4, d_ff=64, n_encoder_layers=2, n_decoder_layers=2, dropout=0.1, max_len=64),
  # the bundled dates model's size (tfm/assets/README.md: 287k parameters with its 53-token vocabulary)
  "small": dict(d_model=64, n_heads=4, d_ff=256, n_encoder_layers=3, n_decoder_layers=2, dropout=0.0, max_len=48),
  # the train-step benchmark's size (docs/PERFORMANCE.md)
  "medium": dict(vocab_size=1000, d_model=128, n_heads=4, d_ff=512, n_encoder_layers=2, n_decoder_layers=2, dropout=0.0),
}


@dataclass(frozen=True)
class VisionConfig(Fields):
  """Every size of the Vision Transformer (ViT): an image cut into patch_size x patch_size patches, each patch a token,
  through the Transformer's encoder.

  The encoder's fields have TransformerConfig's names (d_model, n_heads, d_ff, activation, layer_norm_eps, dropout), so
  tfm.nn.layers.EncoderLayer and tfm.nn.transformer.Encoder build from either config; a ViT's encoder is always pre-norm with a
  final LayerNorm (`norm_first`, `use_final_norm`). Images are (num_channels, image_size, image_size); `image_mean` and
  `image_std` (one per channel, default 0.5) normalise pixels in [0, 1] as the model was trained on them; `labels`
  names the classes (empty: "0", "1", ...). num_labels=0 is an encoder without a classification head.
  Defaults are ViT-B/16 at 224 x 224 with 1000 classes.
  """
  image_size: int = 224
  patch_size: int = 16
  num_channels: int = 3
  num_labels: int = 1000
  d_model: int = 768
  n_heads: int = 12
  d_ff: int = 3072
  n_layers: int = 12
  dropout: float = 0.0
  activation: str = "gelu"
  layer_norm_eps: float = 1e-6
  labels: tuple[str, ...] = ()
  image_mean: tuple[float, ...] | None = None
  image_std: tuple[float, ...] | None = None

  def __post_init__(self):
    self.check_integers(("image_size", "patch_size", "num_channels", "d_model", "n_heads", "d_ff"), ("num_labels", "n_layers"))
    if self.image_size % self.patch_size != 0:
      raise ConfigError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}: the patches must "
                        f"tile the image; pick a patch_size among the divisors of {self.image_size}")
    self.check_encoder()
    object.__setattr__(self, "labels", tuple(self.labels))   # JSON gives lists; tuples keep the config hashable
    if self.labels and len(self.labels) != self.num_labels:
      raise ConfigError(f"labels has {len(self.labels)} names but num_labels={self.num_labels}; give one name per class, or none")
    if not all(isinstance(label, str) for label in self.labels): raise ConfigError(f"labels={self.labels!r} must all be strings")
    for name in ("image_mean", "image_std"):
      value = (0.5,) * self.num_channels if getattr(self, name) is None else tuple(float(v) for v in getattr(self, name))
      if len(value) != self.num_channels:
        raise ConfigError(f"{name} has {len(value)} values but num_channels={self.num_channels}; give one per channel")
      object.__setattr__(self, name, value)
    if not all(s > 0 for s in self.image_std): raise ConfigError(f"image_std={self.image_std!r} must be positive")

  # the encoder stack's view: what EncoderLayer and Encoder read from a TransformerConfig
  @property
  def norm_first(self) -> bool: return True

  @property
  def use_final_norm(self) -> bool: return True

  @property
  def n_encoder_layers(self) -> int: return self.n_layers

  @property
  def grid(self) -> int:
    """Patches along each side of the image."""
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int: return self.grid * self.grid

  @property
  def patch_dim(self) -> int:
    """Numbers in one flattened patch: what the patch embedding projects to d_model."""
    return self.num_channels * self.patch_size * self.patch_size

  def label(self, index: int) -> str:
    """The name of class `index`."""
    return self.labels[index] if self.labels else str(index)


# ViT-B/16 and L/16: the ViT paper's table 1 (Dosovitskiy et al., 2021); Ti/16 and S/16: the smaller widths its authors
# added later ("How to train your ViT", Steiner et al., 2022, as in DeiT). Every one at 224 x 224 with 16 x 16 patches.
VISION_PRESETS: dict[str, dict[str, Any]] = {
  "vit-ti16": dict(d_model=192, n_heads=3, d_ff=768, n_layers=12),
  "vit-s16": dict(d_model=384, n_heads=6, d_ff=1536, n_layers=12),
  "vit-b16": dict(d_model=768, n_heads=12, d_ff=3072, n_layers=12),
  "vit-l16": dict(d_model=1024, n_heads=16, d_ff=4096, n_layers=24),
  "vit-tiny": dict(image_size=8, patch_size=4, num_channels=3, num_labels=5, d_model=32, n_heads=4, d_ff=64, n_layers=2),
  # the bundled digits classifier (tfm/assets/README.md): 8 x 8 greyscale, 2 x 2 patches (16 tokens and the class token)
  "digits": dict(image_size=8, patch_size=2, num_channels=1, num_labels=10, d_model=64, n_heads=4, d_ff=128, n_layers=3,
                 labels=tuple(str(i) for i in range(10))),
}

TransformerConfig.PRESETS, TransformerConfig.PRESET_KIND = PRESETS, "preset"
VisionConfig.PRESETS, VisionConfig.PRESET_KIND = VISION_PRESETS, "vision preset"
