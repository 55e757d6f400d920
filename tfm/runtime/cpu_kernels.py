"""Kernels tfm writes itself, as tinygrad custom kernels, for devices whose reductions are serial (CPU): the products
from packed weights (tfm.nn.linear), the exponentials of a log-softmax over a vocabulary (logsumexp) and the FFN's
activations (activated).

On such devices tinygrad 0.14 groups neighbouring loads into 4-wide vectors, and clang then builds 4-wide arithmetic
from them: half an AVX2 unit. Given scalar loads instead, clang vectorises at the machine's own width, 8 floats on
AVX2 (compiled_as_scalars). tinygrad cannot be told that per kernel, so the kernels that gain from it are compiled
here and handed to tinygrad compiled.
"""
from __future__ import annotations

import copy
import functools
import math
from typing import Any, Callable

from tinygrad import Device, Tensor, dtypes
# tinygrad-0.14: codegen.to_program, Opt/OptOps and KernelInfo are internal (kernels compiled here)
from tinygrad.codegen import to_program
from tinygrad.codegen.opt import Opt, OptOps
from tinygrad.helpers import TRAINING
from tinygrad.renderer.cstyle import ClangRenderer
from tinygrad.uop.ops import KernelInfo, UOp

from tfm.runtime.machine import cores

# a vocabulary's size: from this many output features a product over several rows is computed transposed
# (tfm.nn.linear.product), and from this many classes a log-softmax's exponentials are their own kernel (logsumexp)
WIDE = 8192


def serial_reductions(device: Any) -> bool:
  """Whether tinygrad compiles a reduction for this device as one accumulator per output, added to in order: a
  renderer without local memory (CPU) has no GROUP option to split it, and C may not reorder float additions."""
  # tinygrad-0.14: renderer.has_local False: no GROUP option, so each reduction is one serial accumulator
  return isinstance(device, str) and not Device[device].renderer.has_local


def scatter_adds(device: Any) -> bool:
  """Whether tinygrad's scatter-add kernels (C atomics: nn.Embedding's gradient under USE_ATOMICS) compile for this
  device: one CPU device whose renderer is clang's C (not CPU:LLVM or CPU:X86)."""
  return isinstance(device, str) and device.split(":")[0] == "CPU" and isinstance(Device[device].renderer, ClangRenderer)


def thread_opts(items: int, device: str) -> tuple[Opt, ...]:
  """A THREAD option splitting `items` (the kernel's first axis) over as many of the device's threads as divide it."""
  n = max(n for n in range(1, cores(device) + 1) if items % n == 0)
  return (Opt(OptOps.THREAD, 0, n),) if n > 1 else ()


def compiled_as_scalars(sink: UOp, device: str) -> UOp:
  """The kernel compiled by tinygrad for the device (a PROGRAM, which a custom kernel may be), with tinygrad's grouping
  of neighbouring loads and stores into 4-wide vectors turned off for it: C gets scalar loads, which clang vectorises
  at the machine's own width (8 floats on AVX2), where from tinygrad's 4-wide loads it builds 4-wide arithmetic.
  Compiled here rather than by tinygrad's pool of compiling processes, which build their own renderer (and so would
  group the loads again). Measured in docs/PERFORMANCE.md, "Packed products"."""
  renderer = copy.copy(Device[device].renderer)
  renderer.supports_float4 = False   # tinygrad-0.14: float4 load grouping gives clang 4-wide arithmetic; no per-kernel switch
  return to_program(sink, renderer)   # tinygrad-0.14: its compile pool would build its own renderer (float4 again)


@functools.cache
def _rowwise(fn: Callable[..., Any], name: str, rows: int, n: int, device: str):
  """The kernel y[r, i] = fn(x[r, i], *(c[r, 0] for each further input c)), compiled as scalars, its rows split over
  the device's threads: an elementwise function in a plain loop, which clang vectorises whole. With an exponential in
  it (tinygrad's: a polynomial with checks for infinities and NaN), fused into a reduction or read through 4-wide
  loads, it stays mostly scalar."""
  # tinygrad-0.14: its exp (polynomial, inf/NaN checks) fused or read through float4 loads stays scalar: own kernel
  def kernel(y: UOp, x: UOp, *per_row: UOp) -> UOp:
    r, i = UOp.range(rows, 0), UOp.range(n, 1)
    info = KernelInfo(name=f"{name}_{rows}_{n}", opts_to_apply=thread_opts(rows, device))
    return compiled_as_scalars(y[r, i].store(fn(x[r, i], *(c[r, 0] for c in per_row))).end(r, i).sink(arg=info), device)
  return kernel


def _rows_here(x: Tensor, elements: int) -> int | None:
  """The rows of x (rows..., n) as one axis, where x is float32 of at least `elements` numbers with static shapes on a
  device whose reductions are serial: what _rowwise kernels are compiled for; else None."""
  rows, n = math.prod(x.shape[:-1]), x.shape[-1]
  if not (isinstance(rows, int) and isinstance(n, int) and rows * n >= elements and x.dtype == dtypes.float32
          and serial_reductions(x.device)): return None
  return rows


def _rowwise_call(x: Tensor, rows: int, fn: Callable[..., Any], name: str, *per_row: Tensor) -> Tensor:
  """_rowwise's kernel on x as (rows, n) and per-row inputs as (rows, 1); the result (rows, n)."""
  n = x.shape[-1]
  inputs = [x.reshape(rows, n)] + [c.reshape(rows, 1) for c in per_row]
  return Tensor.empty(rows, n, dtype=x.dtype, device=x.device).custom_kernel(*inputs, fxn=_rowwise(fn, name, rows, n, x.device))[0]


def _shifted_exp(v, top): return ((v - top) * (1 / math.log(2))).exp2()


def logsumexp(x: Tensor) -> Tensor:
  """log(sum(exp(x), -1)) of float32 x (rows..., n), kept as a size-1 last axis, computed from the row maxima as
  Tensor.logsumexp does. Where reductions are serial and n is a vocabulary (>= WIDE), the exponentials are their own
  kernel (_rowwise): in a beam 4 x 8 step over opus-mt's 58,101 tokens, 5.3 ms fused into the sum, 1.0 ms this
  way plus 1.7 ms for the passes it adds (docs/PERFORMANCE.md, "Packed products")."""
  m = x.max(-1, keepdim=True)
  if (rows := _rows_here(x, WIDE)) is None or x.shape[-1] < WIDE:   # (_rows_here: the shape is static)
    return m + (x - m).exp().sum(-1, keepdim=True).log()
  # tinygrad-0.14: Tensor.logsumexp's exponentials fused into the sum run ~5x slower over a vocabulary on CPU
  return m + _rowwise_call(x, rows, _shifted_exp, "exp", m).sum(-1).reshape(m.shape).log()


def log_softmax(x: Tensor) -> Tensor:
  """x - logsumexp(x) over the last axis (Tensor.log_softmax, with its exponentials as logsumexp computes them)."""
  return x - logsumexp(x)


ELEMENTS = 1 << 14   # elements from which an activation is its own kernel compiled as scalars (activated)


def activated(x: Tensor, fn: Callable[[Any], Any]) -> Tensor:
  """fn(x) in a kernel of its own (what the next product reads, rather than recomputing it per output feature). fn is
  an elementwise function of tinygrad's that Tensor and UOp both have (`lambda v: v.swish()`). Where reductions are
  serial, outside training, for float32 x of ELEMENTS numbers or more, that kernel is compiled as scalars: an
  activation with an exponential (swish, exact gelu), from 4-wide loads, stayed mostly scalar (a beam 4 x 8 step's six
  swish kernels: 2.65 -> 0.46 ms, plus 0.22 ms to store fc1's output for it; docs/PERFORMANCE.md, "Packed products")."""
  if TRAINING or (rows := _rows_here(x, ELEMENTS)) is None: return fn(x).contiguous()
  return _rowwise_call(x, rows, fn, "act").reshape(x.shape)
