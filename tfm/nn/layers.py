"""The Transformer's building blocks: positional encoding (3.5), the feed-forward network (3.3), and the
encoder and decoder layers (3.1) with their residual connections and layer normalisation (Add & Norm)."""
from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np
from tinygrad import Tensor, nn
from tinygrad.helpers import TRAINING

from tfm.nn.attention import KVCache, MultiHeadAttention
from tfm.config import TransformerConfig, VisionConfig
from tfm.runtime.cpu_kernels import activated
from tfm.nn.gradients import affine
from tfm.nn.linear import Linear
from tfm.runtime.gemm import sums_fit
from tfm.runtime.memory import to_device


def sinusoid_table(length: int, d_model: int, layout: str = "interleaved") -> np.ndarray:
  """3.5 PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...), as a float64 (length, d_model) array.

  "interleaved" stores sin and cos in alternate features, as the paper writes it; "half_split" stores all sines
  then all cosines, as Marian and Pegasus do; "m2m100" is half-split with the frequencies 10000^(-i / (d/2 - 1)), as
  M2M100 and NLLB compute them.
  """
  pos = np.arange(length, dtype=np.float64)[:, None]
  half = d_model // 2
  exponents = np.arange(half, dtype=np.float64) / (half - 1) if layout == "m2m100" else np.arange(0, d_model, 2) / d_model
  angles = pos * np.power(10000.0, -exponents)[None, :]  # (length, d_model / 2)
  if layout != "interleaved": return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
  return np.stack([np.sin(angles), np.cos(angles)], axis=2).reshape(length, d_model)


@functools.cache
def _table_on(length: int, d_model: int, layout: str, device: str) -> Tensor:
  # kept out of the model's attributes: a fixed table is not a weight and must not appear in the state dict
  return to_device(sinusoid_table(length, d_model, layout), device)


class PositionalEncoding:
  """3.5 Positional encoding: a fixed sinusoidal table added to the embeddings (not learned, not saved). Position p
  reads row p + config.position_offset."""

  def __init__(self, config: TransformerConfig, device: str):
    self.rows, self.d_model, self.layout, self.device = config.max_len + config.position_offset, config.d_model, config.positional, device
    self.offset = config.position_offset

  def table(self) -> Tensor:
    """The whole table (max_len + position_offset, d_model) on the model's device, computed once per process and shape."""
    return _table_on(self.rows, self.d_model, self.layout, self.device)

  def __call__(self, length: int, offset: int = 0) -> Tensor:
    """Positions offset .. offset+length: (length, d_model)."""
    return self.table()[self.offset + offset:self.offset + offset + length]


class LearnedPositions:
  """Positions as a trained table, one row per position (BART's and mBART's; position p reads row p + position_offset):
  a weight, saved with the model."""

  def __init__(self, config: TransformerConfig, rows: int | None = None):
    """rows: the positions (max_len where None; an audio encoder's frames, config.source_positions, for Whisper's)."""
    self.weight = Tensor.empty((config.max_len if rows is None else rows) + config.position_offset, config.d_model)
    self.offset = config.position_offset

  def __call__(self, length: int, offset: int = 0) -> Tensor:
    """Positions offset .. offset+length: (length, d_model)."""
    return self.weight[self.offset + offset:self.offset + offset + length]


class FeedForward:
  """3.3 Position-wise feed-forward network: fc2(activation(fc1(x))), applied to each position alike; gated (T5 v1.1),
  fc2(activation(fc1(x)) * gate(x))."""

  def __init__(self, d_model: int, d_ff: int, activation: str, gated: bool = False, bias: bool = True):
    self.fc1, self.fc2, self.activation = Linear(d_model, d_ff, bias), Linear(d_ff, d_model, bias), activation
    self.gate = Linear(d_model, d_ff, bias) if gated else None

  def __call__(self, x: Tensor) -> Tensor:
    h = self.fc1(x)
    # tinygrad-0.14: in a kernel of its own: fused into fc2's loads, each activation would be recomputed once per output feature
    h = h.relu() if self.activation == "relu" else activated(h, ACTIVATION_FUNCTIONS[self.activation])
    return self.fc2(h if self.gate is None else h * self.gate(x))


# on a Tensor or a UOp (tfm.runtime.cpu_kernels.activated): gelu as the exact erf form (PyTorch's, Marian's, BART's), or
# its tanh approximation (T5 v1.1's gelu_new)
ACTIVATION_FUNCTIONS = {"gelu": lambda v: v.gelu(approximate="none"), "gelu_tanh": lambda v: v.gelu(approximate="tanh"),
                        "swish": lambda v: v.swish()}


class LayerNorm(nn.LayerNorm):
  """Layer normalisation (the Norm of 3.1's Add & Norm) computed in float32 whatever the model's dtype, then cast
  back: in float16 a mean, a variance and the affine step in half precision lose more than the tolerance, which is
  why mixed-precision frameworks keep normalisation in float32 too. For a float32 model nothing changes."""

  def __call__(self, x: Tensor) -> Tensor:
    if TRAINING and self.weight is not None and self.axis == (-1,) and sums_fit(x.float()):   # its gain and shift gradients by tfm's column sums
      return affine(x.float().layernorm(eps=self.eps, axis=self.axis), self.weight, self.bias).cast(x.dtype)
    return super().__call__(x.float()).cast(x.dtype)


class RMSNorm(nn.RMSNorm):
  """Root-mean-square normalisation (T5's): x / sqrt(mean(x^2) + eps) times a gain, no mean subtracted, no bias;
  computed in float32 whatever the model's dtype, as LayerNorm."""

  def __call__(self, x: Tensor) -> Tensor: return super().__call__(x.float()).cast(x.dtype)


def norm_layer(config: TransformerConfig | VisionConfig) -> LayerNorm | RMSNorm:
  """The configured normalisation over d_model features: LayerNorm, or RMSNorm (norm="rms")."""
  cls = RMSNorm if config.norm == "rms" else LayerNorm
  return cls(config.d_model, eps=config.layer_norm_eps)


def layer_norm_one_pass(norm: LayerNorm | RMSNorm, x: Tensor) -> Tensor:
  """norm(x) with mean and variance from one reduction (E[x] and E[x^2], in float32 as LayerNorm): a kernel fewer per norm,
  which is what a decode step's latency is made of. Agrees with LayerNorm to float32 rounding for activations whose
  mean is not many standard deviations from zero, as a residual stream's is not. An RMSNorm is one reduction already."""
  if isinstance(norm, RMSNorm): return norm(x)
  xf = x.float()
  stats = Tensor.stack(xf, xf * xf).mean(-1, keepdim=True)
  mean, var = stats[0], stats[1] - stats[0] * stats[0]
  return ((xf - mean) * (var + norm.eps).rsqrt() * norm.weight.float() + norm.bias.float()).cast(x.dtype)


def attention_layer(config: TransformerConfig | VisionConfig) -> MultiHeadAttention:
  """Multi-head attention as the config has it: heads of head_dim features, biased projections or not, scaled or not."""
  return MultiHeadAttention(config.d_model, config.n_heads, config.head_dim, config.linear_bias, config.scale_attention)


def feed_forward(config: TransformerConfig | VisionConfig) -> FeedForward:
  return FeedForward(config.d_model, config.d_ff, config.activation, config.gated_ffn, config.linear_bias)


def add_and_norm(x: Tensor, sublayer: Callable[[Tensor], Tensor], norm: LayerNorm, norm_first: bool, dropout: float) -> Tensor:
  """5.4 residual dropout and 3.1 Add & Norm: LayerNorm(x + Dropout(Sublayer(x))), or x + Dropout(Sublayer(LayerNorm(x))) pre-norm."""
  if norm_first: return x + sublayer(norm(x)).dropout(dropout)
  return norm(x + sublayer(x).dropout(dropout))


class EncoderLayer:
  """3.1 Encoder layer: self-attention, then the feed-forward network, each wrapped in Add & Norm (also a ViT's layer:
  pre-norm, from a VisionConfig, which names the fields read here as TransformerConfig does)."""

  def __init__(self, config: TransformerConfig | VisionConfig):
    self.self_attn = attention_layer(config)
    self.self_attn_layer_norm = norm_layer(config)
    self.ffn = feed_forward(config)
    self.final_layer_norm = norm_layer(config)
    self.norm_first, self.dropout = config.norm_first, config.dropout

  def __call__(self, x: Tensor, mask: Tensor | None) -> Tensor:
    x = add_and_norm(x, lambda h: self.self_attn(h, h, mask), self.self_attn_layer_norm, self.norm_first, self.dropout)
    return add_and_norm(x, self.ffn, self.final_layer_norm, self.norm_first, self.dropout)


class DecoderLayer:
  """3.1 Decoder layer: masked self-attention, attention over the encoder output (encoder_attn), then the FFN."""

  def __init__(self, config: TransformerConfig):
    self.self_attn = attention_layer(config)
    self.self_attn_layer_norm = norm_layer(config)
    self.encoder_attn = attention_layer(config)
    self.encoder_attn_layer_norm = norm_layer(config)
    self.ffn = feed_forward(config)
    self.final_layer_norm = norm_layer(config)
    self.norm_first, self.dropout = config.norm_first, config.dropout

  def __call__(self, x: Tensor, memory: Tensor, self_mask: Tensor | None, memory_mask: Tensor | None) -> Tensor:
    x = add_and_norm(x, lambda h: self.self_attn(h, h, self_mask), self.self_attn_layer_norm, self.norm_first, self.dropout)
    x = add_and_norm(x, lambda h: self.encoder_attn(h, memory, memory_mask), self.encoder_attn_layer_norm,
                     self.norm_first, self.dropout)
    return add_and_norm(x, self.ffn, self.final_layer_norm, self.norm_first, self.dropout)

  def step(self, x: Tensor, cache: KVCache, memory_kv: tuple[Tensor, Tensor], memory_mask: Tensor | None, pos,
           origin: Tensor | None = None, self_bias: Tensor | None = None) -> Tensor:
    """One decode position x (N, 1, d) at position pos: self-attention over the cached slots 0..pos (this position's
    keys and values are stored first; `self_bias` (1, H, 1, slots) added to its scores: T5's relative positions),
    attention over memory's keys and values (projected once per source, values with a ones column), the FFN. The same
    function as __call__ in fewer kernels (attend_step, layer_norm_one_pass)."""
    def self_attention(h: Tensor) -> Tensor:
      a = self.self_attn
      keys, values = cache.update(a.split_heads(a.k_proj(h)), a.split_heads(a.v_proj(h)), pos, origin)
      mask = cache.mask(pos)
      return a.attend_step(h, keys, values, mask if self_bias is None else mask.where(self_bias, -math.inf))
    def norm(ln: LayerNorm) -> Callable[[Tensor], Tensor]: return lambda h: layer_norm_one_pass(ln, h)
    x = add_and_norm(x, self_attention, norm(self.self_attn_layer_norm), self.norm_first, self.dropout)
    x = add_and_norm(x, lambda h: self.encoder_attn.attend_step(h, *memory_kv, memory_mask), norm(self.encoder_attn_layer_norm),
                     self.norm_first, self.dropout)
    return add_and_norm(x, self.ffn, norm(self.final_layer_norm), self.norm_first, self.dropout)

