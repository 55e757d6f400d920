"""Attention (paper section 3.2): scaled dot-product attention, multi-head attention, and the masks they use.

Masks are boolean tensors broadcastable to (B, heads, T_query, T_key) where True means "may attend".
A floating-point mask is added to the scores instead (0 attends, -inf masks), as imported PyTorch masks are.
"""
from __future__ import annotations

import math

import numpy as np
from tinygrad import Tensor, dtypes

from tfm.nn.linear import Linear
from tfm.runtime.gemm import gemm_attends, gemm_nn, gemm_nt
from tfm.runtime.memory import to_device


def padding_mask(ids: Tensor, pad_id: int) -> Tensor:
  """Key-padding mask for ids (B, S): True at real tokens, shaped (B, 1, 1, S) to broadcast over heads and queries."""
  return (ids != pad_id).reshape(ids.shape[0], 1, 1, ids.shape[1])


def causal_mask(length: int, device: str | None = None) -> Tensor:
  """Decoder self-attention mask (1, 1, T, T): query t may attend to keys 0..t, never to later positions."""
  return Tensor.ones(length, length, dtype=dtypes.bool, device=device).tril().reshape(1, 1, length, length)


def scaled(scores: Tensor, head_dim: int, scale: bool) -> Tensor:
  """3.2.1's scaling of q.k by 1/sqrt(d_k), where `scale` (T5 scales none)."""
  return scores / math.sqrt(head_dim) if scale else scores


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None, scale: bool = True) -> Tensor:
  """softmax(Q K^T / sqrt(d_k)) over the keys: (B, H, Tq, hd) x (B, H, Tk, hd) -> (B, H, Tq, Tk)."""
  scores = scaled(gemm_nt(q, k) if gemm_attends(q, k) else q @ k.transpose(-2, -1), q.shape[-1], scale)
  if mask is not None: scores = mask.where(scores, -math.inf) if mask.dtype == dtypes.bool else scores + mask
  # tinygrad-0.14: contiguous, else it fuses the softmax into `weights @ v` and recomputes each exponential once per
  # value column (docs/PERFORMANCE.md); in float32 whatever the dtype, as LayerNorm (tfm/nn/layers.py)
  if gemm_attends(q, k):   # tinygrad-0.14: the exponentials stored once, else the sum's kernel computes them unvectorised
    e = (scores - scores.max(-1, keepdim=True)).exp().contiguous()   # and the division again: 3x at 1500 keys (Whisper)
    return (e / e.sum(-1, keepdim=True)).contiguous()
  return scores.float().softmax(-1).cast(q.dtype).contiguous()


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, scale: bool = True) -> Tensor:
  """3.2.1 Scaled dot-product attention: softmax(Q K^T / sqrt(d_k)) V. On CPU, over many queries, both products are
  tfm's GEMM (tfm.runtime.gemm), 6-11 times tinygrad's kernels at ViT-S/16's (docs/PERFORMANCE.md, "Many rows on CPU")."""
  weights = attention_weights(q, k, mask, scale)
  return gemm_nn(weights, v) if gemm_attends(q, k) else weights @ v


class MultiHeadAttention:
  """3.2.2 Multi-head attention: h parallel heads over learned projections of queries, keys and values. head_dim
  defaults to d_model / n_heads; `bias` and `scale` (q.k / sqrt(head_dim)) are the paper's, T5 has neither."""

  def __init__(self, d_model: int, n_heads: int, head_dim: int | None = None, bias: bool = True, scale: bool = True):
    self.n_heads, self.head_dim, self.scale = n_heads, head_dim or d_model // n_heads, scale
    inner = n_heads * self.head_dim
    self.q_proj, self.k_proj, self.v_proj = Linear(d_model, inner, bias), Linear(d_model, inner, bias), Linear(d_model, inner, bias)
    self.out_proj = Linear(inner, d_model, bias)

  def split_heads(self, x: Tensor) -> Tensor:
    b, t, _ = x.shape
    return x.reshape(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)

  def merge_heads(self, x: Tensor) -> Tensor:
    b, _, t, _ = x.shape
    return x.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)  # (B, T, d)

  def project_kv(self, source: Tensor) -> tuple[Tensor, Tensor]:
    """Keys and values of a source sequence (B, S, d), split into heads: two (B, H, S, hd) tensors."""
    return self.split_heads(self.k_proj(source)), self.split_heads(self.v_proj(source))

  def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Queries from x (B, T, d) against keys and values already projected (as a KV cache holds them)."""
    return self.out_proj(self.merge_heads(scaled_dot_product_attention(self.split_heads(self.q_proj(x)), k, v, mask, self.scale)))

  def __call__(self, x: Tensor, source: Tensor, mask: Tensor | None = None) -> Tensor:
    """Queries from x (B, T, d), keys and values from source (B, S, d): self-attention when source is x."""
    return self.attend(x, *self.project_kv(source), mask)

  def attend_step(self, x: Tensor, k: Tensor, v1: Tensor, mask: Tensor | None = None) -> Tensor:
    """`attend` for a decode step: values v1 carry a ones column (see `attend_normalised_late`). The heads are merged
    into a buffer of their own: read through the division and the merge, out_proj runs about 3 times slower."""
    # tinygrad-0.14: read through the division and the merge, out_proj runs ~3x slower: heads merged into their own buffer
    out = self.merge_heads(attend_normalised_late(self.split_heads(self.q_proj(x)), k, v1, mask, self.scale)).contiguous()
    return self.out_proj(out)


def attend_normalised_late(q: Tensor, k: Tensor, v1: Tensor, mask: Tensor | None = None, scale: bool = True) -> Tensor:
  """3.2.1 as a decode step computes it: softmax(Q K^T / sqrt(d_k)) V with the division after the weighted sum.

  v1 (B, H, S, value_width(hd)) carries a column of ones after the values (then zero columns), so one reduction gives
  both sum(e * v) and sum(e): a kernel fewer than normalising the weights first. Equal to
  `scaled_dot_product_attention(q, k, v1[..., :hd], mask)`."""
  scores = scaled(q @ k.transpose(-2, -1), q.shape[-1], scale)
  if mask is not None: scores = mask.where(scores, -math.inf) if mask.dtype == dtypes.bool else scores + mask
  # the softmax in float32 whatever the dtype, as in attention_weights
  # tinygrad-0.14: cannot compile a float16 max where it emulates float16 (CPU:LLVM on Linux)
  scores = scores.float()
  # tinygrad-0.14: fused into the weighted sum, each exponential is recomputed per value column: their own kernel
  out = (scores - scores.max(-1, keepdim=True)).exp().cast(v1.dtype).contiguous() @ v1
  hd = q.shape[-1]
  return out[..., :hd] / out[..., hd:hd + 1]


def value_width(head_dim: int) -> int:
  """The width of values with their ones column (attend_normalised_late): head_dim + 1 rounded up to a multiple of 4,
  the zero columns making a row of outputs a whole number of vectors. At hd + 1 = 65 (opus-mt, base) tinygrad's CPU
  heuristics found no vector of outputs for the weighted sum and it ran about 5 times slower (docs/PERFORMANCE.md)."""
  # tinygrad-0.14: at hd + 1 = 65 its CPU heuristics found no vector of outputs (5x slower)
  return -(-(head_dim + 1) // 4) * 4


def with_ones(v: Tensor) -> Tensor:
  """Values (B, H, S, hd) -> (B, H, S, value_width(hd)): the values, a column of ones, zero columns, as
  `attend_normalised_late` takes them."""
  hd, width = v.shape[-1], value_width(v.shape[-1])
  return v.pad(((0, 0), (0, 0), (0, 0), (0, width - hd))) + (Tensor.arange(width) == hd).cast(v.dtype)


class KVCache:
  """The keys and values one decoder self-attention has produced so far, so a decode step projects only its own
  position: one preallocated (2, rows, heads, length, value_width(head_dim)) buffer written one slot per step at a
  symbolic position. Values carry their ones column for `attend_normalised_late` (the keys' extra columns are unused)."""

  def __init__(self, rows: int, n_heads: int, length: int, head_dim: int, device: str | tuple[str, ...], dtype=dtypes.float32,
               axis: int | None = None, group: int = 1):
    """On several devices the buffer is split along `axis` (1: rows, data parallel; 2: heads, tensor parallel).
    `group`: rows come in groups of this many (a sentence's beams), and a row only ever continues one of its group's."""
    self.group = group
    # zeros, not empty: masked slots still meet the values in `weights @ v`, and 0 * garbage could be NaN;
    # the column after the values is 1 (see attend_normalised_late), the keys' 0
    kv = np.zeros((2, rows, n_heads, length, value_width(head_dim)), np.float32)
    kv[1, ..., head_dim] = 1.0
    self.kv = to_device(kv, device, dtype, axis)

  @property
  def length(self) -> int: return self.kv.shape[3]

  def mask(self, pos) -> Tensor:
    """(1, 1, 1, length): the query at position pos sees slots 0..pos. Built explicitly because a top-left-aligned
    causal mask (`is_causal`) would let that one query see slot 0 only."""
    # tinygrad-0.14: is_causal is top-left aligned (one query would see slot 0 only): mask built explicitly
    return (Tensor.arange(self.length) <= pos).reshape(1, 1, 1, self.length)

  def update(self, k: Tensor, v: Tensor, pos, origin: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Store one step's k, v (rows, H, 1, hd) in slot pos; return every slot's keys (rows, H, length, hd) and values
    with their ones column (rows, H, length, value_width(hd)).

    With `origin` (rows,) the filled slots 0..pos-1 are gathered first: row i continues the hypothesis that row
    origin[i] of its own group held (beam search reorders its hypotheses every step)."""
    hd = k.shape[-1]
    if origin is not None: self.kv[:, :, :, :pos].assign(self._reordered(origin, pos))
    # tinygrad-0.14: k and v made first: fused into the write, their two projections compile to one kernel several times slower
    self.kv[:, :, :, pos:pos + 1, :hd].assign(Tensor.stack(k.contiguous(), v.contiguous()).cast(self.kv.dtype))  # (2, rows, H, 1, hd)
    return self.kv[0, :, :, :, :hd], self.kv[1]

  def _reordered(self, origin: Tensor, pos) -> Tensor:
    """Slots 0..pos-1 with row i's taken from row origin[i], picked within each group (a one-hot sum over the group's
    rows): a row never reads another sentence's, so rows split over devices (data parallel) stay on their device."""
    _, rows, heads, _, width = self.kv.shape
    g = self.group
    local = origin - (Tensor.arange(rows) // g) * g                                          # (rows,), each in [0, g)
    pick = local.reshape(rows // g, g, 1) == Tensor.arange(g)                               # (groups, g, g)
    filled = self.kv[:, :, :, :pos].reshape(2, rows // g, 1, g, heads, pos, width)
    # where, not a product: a row holding inf (a float16 overflow) must not turn its siblings into 0 * inf = NaN
    return pick.reshape(1, rows // g, g, g, 1, 1, 1).where(filled, 0).sum(3).reshape(2, rows, heads, pos, width)
