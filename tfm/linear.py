"""Linear: tinygrad's nn.Linear (same weights, same names, same inference kernels) with a training-time gradient
whose weight part runs two to three times faster, and int8 weights with per-row scales as a compute type (quantize).

y = x W^T + b. The weight's gradient is G^T X, a reduction over the tokens: autograd expresses it over the leading
axis of G and X as they are stored, and tinygrad 0.14 compiles that reduction, whose operands are strided along the
reduced axis, at about a third of the speed of a matmul whose operands are contiguous along it (measured in
docs/PERFORMANCE.md, "Where the time goes"). So under training the product is a tinygrad `function` with its own
gradient: dX = G W as autograd computes it, dW = G^T (X^T)^T with G^T and X^T made contiguous.

Both classes here are built with unset (empty) weights, which the model initialises or a loader fills.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from tinygrad import Device, Tensor, dtypes, nn
from tinygrad.dtype import least_upper_dtype, sum_acc_dtype
from tinygrad.function import function
from tinygrad.helpers import TRAINING, prod
from tinygrad.uop.ops import UOp

from tfm.errors import InputError
from tfm.memory import download, like, to_device


def _matmul_wt_gradient(grad: UOp, call: UOp) -> tuple[UOp, UOp]:
  x, w = (Tensor(u) for u in call.src[1:])  # the call's arguments, in matmul_wt's order
  g = Tensor(grad)
  g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])  # (tokens, out), (tokens, in)
  dx = (g2 @ w).reshape(x.shape)
  dw = g2.T.contiguous() @ x2.T.contiguous().T  # (out, tokens) @ (tokens, in), both read along the tokens
  return dx.uop, dw.uop


@function(grad_fxn=_matmul_wt_gradient)
def matmul_wt(x: Tensor, w: Tensor) -> Tensor:
  """x @ w.T, differentiated by `_matmul_wt_gradient`."""
  return x @ w.T


LANES = 16      # partial sums per output where a product's reduction is split (one AVX-512 vector of float32)
WIDE = 8192     # output features from which a product over several rows is computed transposed (a vocabulary)


def _serial_reductions(device: Any) -> bool:
  """Whether tinygrad compiles a reduction for this device as one accumulator per output, added to in order: a
  renderer without local memory (CPU) has no GROUP option to split it, and C may not reorder float additions."""
  return isinstance(device, str) and not Device[device].renderer.has_local


def product(x: Tensor, w: Tensor) -> Tensor:
  """x @ w.T for x (..., in) and w (out, in), w cast to x's dtype (int8 weights are read as int8), in the form that
  compiles fastest where reductions are serial (CPU).

  There a product over few rows is a chain of dependent additions per output, bound by the adder's latency, not by
  memory: split into LANES partial sums (LANES independent chains, contiguous vector loads) it runs 1.5-3 times faster
  at one row (docs/PERFORMANCE.md, "Products on CPU"). Over 8 rows or more, a product with a vocabulary's worth of
  float outputs runs faster computed as (w @ x^T)^T, its output loop outermost (int8 weights read that way run two
  times slower). Elsewhere, and for other sizes, x @ w.T."""
  rows, (out, k), float_weights = prod(x.shape[:-1]), w.shape, dtypes.is_float(w.dtype)
  w = w.cast(x.dtype)
  if not isinstance(rows, int) or not _serial_reductions(x.device) or TRAINING: return x @ w.T
  if k % LANES == 0 and (rows == 1 or (rows <= 4 and k >= out)):
    split = x.reshape(*x.shape[:-1], 1, k // LANES, LANES) * w.reshape(out, k // LANES, LANES)
    return split.sum(-2, dtype=sum_acc_dtype(split.dtype)).sum(-1).cast(least_upper_dtype(x.dtype, w.dtype))
  if rows >= 8 and out >= WIDE and float_weights: return (w @ x.reshape(rows, k).T).contiguous().T.reshape(*x.shape[:-1], out)
  return x @ w.T


class Linear(nn.Linear):
  """nn.Linear whose weight gradient is computed from contiguous transposes (module docstring); outside training
  (no Context(TRAINING=1)) it is tinygrad's Linear, its product in the form that compiles fastest for the device and
  the number of rows (`product`).

  Built with unset (empty) weights: tinygrad's lazy uniform draws cost milliseconds of graph building per layer and
  were always replaced, by the model's own initialisation or by a loader."""

  scale: Tensor | None = None   # set by quantize(): the weight is then int8 and each output row has this scale

  def __init__(self, in_features: int, out_features: int, bias: bool = True):
    self.weight = Tensor.empty(out_features, in_features)
    self.bias = Tensor.empty(out_features) if bias else None

  def __call__(self, x: Tensor) -> Tensor:
    if self.scale is not None:
      if TRAINING: raise InputError("an int8 model cannot be trained: load the float32 weights to train, quantize after")
      # the cast is fused into the product's loads, so the kernel reads the int8 weights; the row scales apply to
      # the outputs, one multiply per output instead of one per weight
      y = product(x, self.weight) * self.scale.cast(x.dtype)
      return y if self.bias is None else y + self.bias
    if not TRAINING:
      y = product(x, self.weight)
      return y if self.bias is None else y + self.bias
    y = matmul_wt(x, self.weight)
    return y if self.bias is None else y + self.bias

  def padded(self, x: Tensor, multiple: int) -> Tensor:
    """self(x) at inference, computed over the output features rounded up to a multiple (zero rows, sliced off)."""
    extra = -self.weight.shape[0] % multiple
    if not extra: return self(x)
    def pad(t: Tensor) -> Tensor: return t.pad(((0, extra),) + ((0, 0),) * (t.ndim - 1))
    y = product(x, pad(self.weight))
    if self.scale is not None: y = y * pad(self.scale.cast(x.dtype))
    if self.bias is not None: y = y + pad(self.bias)
    return y.contiguous()[..., :self.weight.shape[0]]

  def set_int8(self, rows: np.ndarray, scale: np.ndarray) -> None:
    """Make the weight these int8 rows (values in [-127, 127], any integer-valued array) and per-row scales, laid out
    over the weight's devices as it is (a weight split by rows has its scales split with them)."""
    rows_axis = self.weight.uop.axis if isinstance(self.weight.device, tuple) else None
    self.weight = like(np.asarray(rows).astype(np.int8), self.weight, dtypes.int8)
    self.scale = to_device(np.asarray(scale, np.float32), self.weight.device, axis=0 if rows_axis == 0 else None)

  def quantize(self, weight: np.ndarray | None = None) -> None:
    """Replace the weight by its int8 rows and their scales (quantize_rows), in place; the bias stays as it is.
    `weight`: the float weight as a host array (a loader's), instead of the one on the device."""
    self.set_int8(*quantize_rows(download(self.weight) if weight is None else weight))


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-output-row absmax int8 (the scheme of CTranslate2's int8 and tinygrad's llama example): w ~ q * scale[:, None]
  with q = round(w / scale) in [-127, 127] and scale = max |row| / 127 (1 for a row of zeros)."""
  w = np.asarray(w, np.float32)
  amax = np.abs(w).max(1)
  scale = np.where(amax > 0, amax / 127, 1).astype(np.float32)
  return np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8), scale


LINEAR_WEIGHTS = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight", "fc1.weight", "fc2.weight")


def linear_layers(obj: Any) -> list[Linear]:
  """Every Linear reachable from obj's attributes and lists (a model's projections, FFNs and generator), once each."""
  found: dict[int, Linear] = {}
  seen: set[int] = set()
  def walk(x: Any) -> None:
    if id(x) in seen: return
    seen.add(id(x))
    if isinstance(x, Linear): found[id(x)] = x
    elif isinstance(x, (list, tuple)):
      for y in x: walk(y)
    elif hasattr(x, "__dict__") and not isinstance(x, Tensor):
      for y in vars(x).values(): walk(y)
  walk(obj)
  return list(found.values())


class Embedding(nn.Embedding):
  """tinygrad's Embedding (same weight name, same lookup) built with an unset table, as Linear is."""

  def __init__(self, vocab_size: int, embed_size: int):
    self.weight = Tensor.empty(vocab_size, embed_size)
