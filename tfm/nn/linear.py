"""Linear: tinygrad's nn.Linear (same weights, same names, same inference kernels) with a training-time gradient
whose weight part runs two to three times faster, and int8 weights with per-row scales as a compute type (quantize).

y = x W^T + b. The weight's gradient is G^T X, a reduction over the tokens: autograd expresses it over the leading
axis of G and X as they are stored, and tinygrad 0.14 compiles that reduction, whose operands are strided along the
reduced axis, at about a third of the speed of a matmul whose operands are contiguous along it (measured in
docs/PERFORMANCE.md, "Where the time goes"). So under training the product is a tinygrad `function` with its own
gradient (tfm.nn.gradients.matmul_wt), and on CPU tfm's GEMM with GEMM gradients (tfm.runtime.gemm); the bias's
gradient on CPU is tfm's column sums (tfm.nn.gradients.add_bias).

Decoding on CPU computes large layers from packed copies of their weights (Linear.pack, packed_product): as many
output features as the machine's float32 vector holds, interleaved along the input axis, so that one vector load
feeds them all.

Both classes here are built with unset (empty) weights, which the model initialises or a loader fills.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import weakref
from typing import Any

import numpy as np
from tinygrad import Tensor, dtypes, nn
from tinygrad.codegen.opt import Opt, OptOps
from tinygrad.dtype import least_upper_dtype, sum_acc_dtype
from tinygrad.helpers import TRAINING, Context, prod
from tinygrad.uop.ops import AxisType, KernelInfo, Ops, UOp

from backends import switches
from tfm.errors import InputError
from tfm.runtime.cpu_kernels import WIDE, compiled_as_scalars, scatter_adds, serial_reductions, thread_opts
from tfm.nn.gradients import add_bias, matmul_wt
from tfm.runtime.gemm import gemm, gemm_fits, sums_fit
from tfm.runtime.machine import vector_floats
from tfm.runtime.memory import download, like, to_device


LANES = 16      # partial sums per output where a product's reduction is split (one AVX-512 vector of float32)
# output features per block of a packed weight: one vector register of float32 on this machine (16 with AVX-512, 8 with
# AVX2, 4 otherwise; tfm.runtime.machine). On the AVX-512 VM 16 decodes an opus-mt-shaped model 1.3x faster greedy and
# 1.1x in beam 4 x 8 than 8 did (docs/PERFORMANCE.md, "Packed products")
PACK = vector_floats()
PACK_MIN = 1 << 17   # numbers in a weight from which decoding packs it (a 512 x 512 projection has 2 of these)


def product(x: Tensor, w: Tensor) -> Tensor:
  """x @ w.T for x (..., in) and w (out, in), w cast to x's dtype (int8 weights are read as int8), in the form that
  compiles fastest where reductions are serial (CPU).

  There a product over few rows is a chain of dependent additions per output, bound by the adder's latency, not by
  memory: split into LANES partial sums (LANES independent chains, contiguous vector loads) it runs 1.5-3 times faster
  at one row (docs/PERFORMANCE.md, "Products on CPU"). Over 8 rows or more, a product with a vocabulary's worth of
  float outputs runs faster computed as (w @ x^T)^T, its output loop outermost (int8 weights read that way run two
  times slower). From GEMM_ROWS rows, float32 products of weights of GEMM_MIN numbers or more are tfm's GEMM kernel
  (register tiles of rows x a vector of outputs, split over the cores), from a packed layout of the weight computed in
  the same graph: 6-8 times tinygrad's default kernel at ViT-S/16's shapes (docs/PERFORMANCE.md, "Many rows on CPU").
  Elsewhere, and for other sizes, x @ w.T."""
  rows, (out, k), float_weights = prod(x.shape[:-1]), w.shape, dtypes.is_float(w.dtype)
  if not TRAINING and gemm_fits(x, w): return gemm(x.reshape(rows, k), w).reshape(*x.shape[:-1], out)
  w = w.cast(x.dtype)
  if not isinstance(rows, int) or not serial_reductions(x.device) or TRAINING: return x @ w.T
  # tinygrad-0.14: a CPU reduction is one serial chain per output (no GROUP): split into LANES partial sums
  if k % LANES == 0 and (rows == 1 or (rows <= 4 and k >= out)):
    split = x.reshape(*x.shape[:-1], 1, k // LANES, LANES) * w.reshape(out, k // LANES, LANES)
    return split.sum(-2, dtype=sum_acc_dtype(split.dtype)).sum(-1).cast(least_upper_dtype(x.dtype, w.dtype))
  # tinygrad-0.14: its CPU heuristics run a vocabulary-wide x @ w.T faster as (w @ x^T)^T
  if rows >= 8 and out >= WIDE and float_weights: return (w @ x.reshape(rows, k).T).contiguous().T.reshape(*x.shape[:-1], out)
  return x @ w.T


def packable(weight: Tensor) -> bool:
  """Do products with this weight run faster from a packed copy (Linear.pack)? Where reductions are serial (CPU, one
  device), for float32 and int8 weights of at least PACK_MIN numbers (smaller ones take microseconds either way).
  TFM_PACKED=0 turns packing off."""
  if not switches.packed() or not serial_reductions(weight.device): return False
  return weight.dtype in (dtypes.float32, dtypes.int8) and weight.numel() >= PACK_MIN


def packed_blocks(out: int) -> int:
  """Blocks of PACK output features a packed weight of `out` rows has: a multiple of 4, the tile of one-row products
  (the padding rows are zeros)."""
  return -(-out // (4 * PACK)) * 4


def packed_layout(w: Tensor, blocks: int) -> Tensor:
  """w (out, in) as (blocks, in, PACK): block b holds output features b*PACK .. b*PACK+PACK-1, interleaved along the
  input axis, padded with zero rows to blocks*PACK."""
  out, k = w.shape
  return w.pad(((0, blocks * PACK - out), (0, 0))).reshape(blocks, PACK, k).permute(0, 2, 1)


THREADED = 1 << 22   # multiply-adds from which a packed product splits over the device's threads (each split costs ~50 us)


def _packed_opts(rows: int, blocks: int, k: int, device: str) -> tuple[Opt, ...]:
  """The kernel options of a packed product (kernel axes: blocks, rows when > 1, PACK, in): PACK outputs in one vector
  and, over several rows, 8 rows per tile where they divide (else 4, 2), so that each weight vector loaded feeds 8
  multiply-adds into 8 independent sums (the latency of a multiply-add is hidden behind 8, not 4); at one row, 4 blocks
  at a time (four independent chains of additions; that product is bound by memory, not by the adder). A product of
  THREADED multiply-adds or more splits its blocks over as many of the device's threads as divide them. Measured in
  docs/PERFORMANCE.md, "Packed products"."""
  # tinygrad-0.14: its heuristics give a packed product no vector of outputs: explicit UPCAST/THREAD options
  large = rows * blocks * PACK * k >= THREADED
  if rows == 1:
    opts, blocks = [Opt(OptOps.UPCAST, 1, PACK), Opt(OptOps.UPCAST, 0, 4)], blocks // 4
  else:
    tile = next(n for n in (8, 4, 2, 1) if rows % n == 0)
    opts = [Opt(OptOps.UPCAST, 2, PACK)] + ([Opt(OptOps.UPCAST, 1, tile)] if tile > 1 else [])
  return tuple(opts) + (thread_opts(blocks, device) if large else ())


@functools.cache
def packed_product(blocks: int, rows: int, k: int, out: int, scaled: bool, biased: bool, device: str):
  """The kernel of a product from a packed weight, as a tinygrad custom kernel carrying its own options:
  y[r, b*PACK + j] = sum_i w[b, i, j] x[r, i] (times the feature's scale, plus its bias, where `scaled`, `biased`),
  accumulated in float32 and stored row by row, as the layers after it read it. tinygrad's heuristics give this loop
  nest no vector of outputs; the options (_packed_opts) give it one, and a kernel written as a tensor expression cannot
  carry them in 0.14 (its contiguous(arg=opts) is dropped when the graph is turned into kernels). Over several rows it
  is returned compiled (tfm.runtime.cpu_kernels.compiled_as_scalars), and the scales and bias are left to the kernels that read
  y (Linear._from_packed): read here, they were loaded before the reduction and held in registers through it, which
  left clang too few for the tile's sums (it kept them in memory instead)."""
  def kernel(y: UOp, w: UOp, x: UOp, *extra: UOp) -> UOp:
    b, r, j, i = UOp.range(blocks, 0), UOp.range(rows, 1), UOp.range(PACK, 2), UOp.range(k, 3, AxisType.REDUCE)
    acc = (w[b, i, j].cast(dtypes.float32) * x[r, i].cast(dtypes.float32)).reduce(i, arg=Ops.ADD)
    feature = (b * PACK + j).clip(0, out - 1)   # padding rows (zero weights) read the last row's scale and bias: sliced off
    if scaled: acc = acc * extra[0][feature].cast(dtypes.float32)
    if biased: acc = acc + extra[-1][feature].cast(dtypes.float32)
    # tinygrad-0.14: a tensor expression's contiguous(arg=opts) is dropped when scheduled: a UOp custom kernel carries them
    info = KernelInfo(name=f"packed_{rows}_{blocks * PACK}_{k}", opts_to_apply=_packed_opts(rows, blocks, k, device))
    sink = y[r, b * PACK + j].store(acc.cast(y.dtype)).end(b, r, j).sink(arg=info)
    return sink if rows == 1 else compiled_as_scalars(sink, device)   # tinygrad-0.14: float4 loads (compiled_as_scalars)
  return kernel


_packing: contextvars.ContextVar[bool] = contextvars.ContextVar("tfm_packed_products", default=False)
# each Linear's packed copy (Linear.pack), kept beside the layer rather than in it: an attribute would be a tensor of
# the model's state dict (saved, loaded, trained), and this is a copy of one that only decoding reads
_packed: weakref.WeakKeyDictionary[Any, Tensor] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def packed_products():
  """Within this block (in this thread), Linear layers with packed copies (pack) compute from them; outside it they
  read `weight` as ever, so a forward pass never sees a copy older than the weight (its owner refreshes it: repack)."""
  token = _packing.set(True)
  try: yield
  finally: _packing.reset(token)


class Linear(nn.Linear):
  """nn.Linear whose weight gradient is computed from contiguous transposes (module docstring); outside training
  (no Context(TRAINING=1)) it is tinygrad's Linear, its product in the form that compiles fastest for the device and
  the number of rows (`product`).

  Built with unset (empty) weights: tinygrad's lazy uniform draws cost milliseconds of graph building per layer and
  were always replaced, by the model's own initialisation or by a loader."""

  scale: Tensor | None = None   # set by quantize(): the weight is then int8 and each output row has this scale

  def __init__(self, in_features: int, out_features: int, bias: bool = True):
    # tinygrad-0.14: nn.Linear's lazy uniform init costs ms of graph building per layer: built empty
    self.weight = Tensor.empty(out_features, in_features)
    self.bias = Tensor.empty(out_features) if bias else None

  def __call__(self, x: Tensor) -> Tensor:
    if self._reads_packed(x): return self._from_packed(x)
    if TRAINING:
      if self.scale is not None: raise InputError("an int8 model cannot be trained: load the float32 weights to train, quantize after")
      # float32 on CPU: tfm's GEMM, its gradients GEMMs too (tfm.runtime.gemm); elsewhere dW from contiguous transposes
      y = gemm(x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], -1) if gemm_fits(x, self.weight) else matmul_wt(x, self.weight)
    # int8: the cast is fused into the product's loads, so the kernel reads the int8 weights; the row scales apply to
    # the outputs, one multiply per output instead of one per weight
    elif self.scale is not None: y = product(x, self.weight) * self.scale.cast(x.dtype)
    else: y = product(x, self.weight)
    if self.bias is None: return y
    return add_bias(y, self.bias) if TRAINING and sums_fit(y) else y + self.bias

  @property
  def packed(self) -> Tensor | None:
    """The packed copy of the weight (pack), or None: (blocks, in, PACK), see packed_layout."""
    return _packed.get(self)

  def pack(self) -> None:
    """Give the layer a packed copy of its weight (packed_layout), for products on devices where they compute faster
    from it (packable). Its contents are written by repack(); products read it inside packed_products()."""
    if self.packed is None or self.packed.dtype != self.weight.dtype:   # (a quantized weight needs an int8 copy)
      (out, k), dev = self.weight.shape, self.weight.device
      _packed[self] = Tensor.empty(packed_blocks(out), k, PACK, dtype=self.weight.dtype, device=dev).realize()

  def unpack(self) -> None:
    """Drop the packed copy: products read the weight again."""
    _packed.pop(self, None)

  def repack(self) -> Tensor:
    """The write of the current weight into the packed copy (to realize with the step that reads it)."""
    assert self.packed is not None, "repack() of a Linear that was never packed"
    return self.packed.assign(packed_layout(self.weight, self.packed.shape[0]))

  def _reads_packed(self, x: Tensor) -> bool:
    return _packing.get() and self.packed is not None and not TRAINING and isinstance(prod(x.shape[:-1]), int)

  def _from_packed(self, x: Tensor) -> Tensor:
    """self(x) computed from the packed weight by `packed_product` (its padding outputs sliced off), times the row
    scales of an int8 weight, plus the bias: in the kernel at one row, by the kernels that read it over several."""
    packed, (out, k) = self.packed, self.weight.shape
    rows = prod(x.shape[:-1])
    extra = [t for t in (self.scale, self.bias) if t is not None] if rows == 1 else []
    fxn = packed_product(packed.shape[0], rows, k, out, rows == 1 and self.scale is not None, rows == 1 and self.bias is not None,
                         packed.device)
    y = Tensor.empty(rows, packed.shape[0] * PACK, dtype=x.dtype, device=x.device).custom_kernel(packed, x.reshape(rows, k), *extra, fxn=fxn)[0]
    y = y.reshape(*x.shape[:-1], packed.shape[0] * PACK)[..., :out]
    if rows == 1: return y
    if self.scale is not None: y = y * self.scale.cast(x.dtype)
    return y if self.bias is None else y + self.bias

  def padded(self, x: Tensor, multiple: int) -> Tensor:
    """self(x) at inference, computed over the output features rounded up to a multiple (zero rows, sliced off)."""
    extra = -self.weight.shape[0] % multiple
    if not extra or self._reads_packed(x): return self(x)
    def pad(t: Tensor) -> Tensor: return t.pad(((0, extra),) + ((0, 0),) * (t.ndim - 1))
    y = product(x, pad(self.weight))
    if self.scale is not None: y = y * pad(self.scale.cast(x.dtype))
    if self.bias is not None: y = y + pad(self.bias)
    return y.contiguous()[..., :self.weight.shape[0]]

  def set_int8(self, rows: np.ndarray, scale: np.ndarray) -> None:
    """Make the weight these int8 rows (values in [-127, 127], any integer-valued array) and per-row scales, laid out
    over the weight's devices as it is (a weight split by rows has its scales split with them)."""
    rows_axis = self.weight.uop.axis if isinstance(self.weight.device, tuple) else None   # tinygrad-0.14: shard axis only on uop.axis
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


LINEAR_WEIGHTS = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight", "fc1.weight", "fc2.weight", "gate.weight")


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


def pack_layers(obj: Any) -> list[Linear]:
  """Pack every Linear layer reachable from obj whose weight is packable (Linear.pack), unpack the others; returns the
  packed layers, whose copies the caller refreshes (Linear.repack) before products read them."""
  layers = linear_layers(obj)
  for layer in layers:
    if packable(layer.weight): layer.pack()
    else: layer.unpack()
  return [layer for layer in layers if layer.packed is not None]


class Embedding(nn.Embedding):
  """tinygrad's Embedding (same weight name, same lookup) built with an unset table, as Linear is.

  Under training on a CPU device compiled through C, the table's gradient is tinygrad's scatter-add kernel (one atomic
  add per token and feature) instead of autograd's reduction, which computes every row of the table from every token
  (vocab x tokens x d): the medium train step's embedding gradient 112 -> 2 ms (docs/PERFORMANCE.md, "Training on CPU")."""

  def __init__(self, vocab_size: int, embed_size: int):
    self.weight = Tensor.empty(vocab_size, embed_size)   # tinygrad-0.14: nn.Embedding's lazy init is slow (as Linear's)

  def __call__(self, idx: Tensor) -> Tensor:
    if not (TRAINING and scatter_adds(self.weight.device)): return super().__call__(idx)
    # tinygrad-0.14: USE_ATOMICS picks nn.Embedding's scatter-add gradient (its kernel is C: clang's renderer only)
    with Context(USE_ATOMICS=1): return super().__call__(idx)
