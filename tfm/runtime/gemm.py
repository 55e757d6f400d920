"""The product of many rows on CPU: y = x @ w.T for x (rows, in) and w (out, in), with w read from a packed copy,
(blocks, in, L): L output features interleaved along the input axis, L the machine's float32 lanes
(tfm.runtime.machine.vector_floats: 16 with AVX-512, 8 with AVX2).

The kernel is a tinygrad custom kernel whose loop nest is a register tile of TILE rows x L outputs: per input i, one
vector load of the packed weight and TILE broadcasts of x, TILE multiply-adds into TILE vector accumulators, so clang
builds it from full-width FMAs (`vfmadd231ps zmm, zmm, mem{1to16}` on AVX-512). The blocks of L outputs are split over
the cores (THREAD). Rows that do not fill the last tile read the last row again; their outputs are sliced off. Measured
in docs/PERFORMANCE.md, "Many rows on CPU".

The same kernel serves attention's products per head (gemm_nt, gemm_nn: an axis of groups), training's gradients (GEMMs
again; G^T X reads G transposed as stored: gemm_tn) and, at inference, a reduction longer than L1 holds in parts
(k_block); column_sums sums the rows of a gradient for a bias or a norm. Measured in docs/PERFORMANCE.md, "Training on
CPU, the encoder's long products, and `auto`".
"""
from __future__ import annotations

import copy
import functools
import math

from tinygrad import Device, Tensor, dtypes
from tinygrad.codegen import to_program
from tinygrad.helpers import TRAINING
from tinygrad.codegen.opt import Opt, OptOps
from tinygrad.renderer.cstyle import ClangRenderer
from tinygrad.renderer.llvmir import LLVMRenderer
from tinygrad.runtime.support.compiler_cpu import ClangCompiler
from tinygrad.uop.ops import AxisType, KernelInfo, Ops, UOp

from tfm.runtime.cpu_kernels import serial_reductions
from tfm.runtime.machine import cores, l1_data_bytes, vector_floats

TILE = 12   # rows per register tile: 12 accumulators, a weight vector and a broadcast fit AVX2's 16 vector registers


def gemm_blocks(out: int, lanes: int, threads: int) -> int:
  """Blocks of `lanes` outputs in the packed copy of a weight with `out` rows: a multiple of `threads`, so that each
  core gets as many (the padding rows are zeros)."""
  return -(-out // (lanes * threads)) * threads


def gemm_layout(w: Tensor, lanes: int, blocks: int) -> Tensor:
  """w (out, in) as (blocks, in, lanes): block b holds outputs b*lanes .. b*lanes+lanes-1 interleaved along the input
  axis, padded with zero rows to blocks*lanes outputs."""
  out, k = w.shape
  return w.pad(((0, blocks * lanes - out), (0, 0))).reshape(blocks, lanes, k).permute(0, 2, 1)


def _renderer(device: str, lanes: int):
  """The device's renderer for this kernel: scalar loads and stores (clang then vectorises at the machine's width, as
  tfm.runtime.cpu_kernels.compiled_as_scalars does), 64-bit indices, and 512-bit vectors preferred where a tile is 16
  lanes (clang 14 otherwise prefers 256-bit ones). The C renderer only: CPU:LLVM and CPU:X86 keep their own, with
  scalar loads."""
  renderer = copy.copy(Device[device].renderer)
  renderer.supports_float4 = False
  if not isinstance(renderer, ClangRenderer): return renderer
  # tinygrad-0.14: indices are rendered as 32-bit ints; sign-extended to addresses, clang's vectoriser could not prove
  # the loads of one weight vector consecutive when the input width is not a power of two (scalar FMAs at 384 and 1536)
  renderer.type_map = {**renderer.type_map, dtypes.int: "long"}
  arch = renderer.target.arch.split(",")
  if lanes == 16 and arch[0] == "x86_64": renderer.compiler = ClangCompiler(arch + ["prefer-vector-width=512"], cachekey="tfm_gemm_512")
  return renderer


def k_block(lanes: int) -> int:
  """Inputs per part of a long reduction at inference: a part's slice of a weight block (k_block x lanes floats) fills
  the core's L1 data cache (512 on a 32 KiB L1 with 16 lanes), a power of two, at least 128. Measured on the AMD EPYC
  VM at 1024 x 2048 x 512 (opus-mt's fc2): 64 GFLOP/s in one part, 115 in parts of 512 (docs/PERFORMANCE.md)."""
  return max(128, 1 << ((l1_data_bytes() // (4 * lanes)).bit_length() - 1))


@functools.cache
def gemm_kernel(rows: int, k: int, blocks: int, lanes: int, threads: int, device: str, groups: int = 1, transposed: bool = False,
                part: tuple[int, int] | None = None):
  """The custom kernel y[g, r, b*lanes + j] = sum_i w[g, b, i, j] x[g, min(r, rows-1), i] over rows rounded up to
  TILE, compiled for the device (a PROGRAM); without groups (1) the g axis is left out. The cores split the groups
  where they divide them, else the blocks. `transposed`: x is stored (k, rows), read as x[i, r] (a tile's rows are
  then neighbours in memory). `part` (k0, kc): the sum over inputs k0 .. k0+kc-1 only, plus, after the first part, the
  previous part's sums (an input more): the reduction in parts whose slice of the weight stays in L1 (k_block)."""
  tiles, grouped = -(-rows // TILE), groups > 1
  k0, kc = part or (0, k)
  def kernel(y: UOp, w: UOp, x: UOp, *previous: UOp) -> UOp:
    g = (UOp.range(groups, 0),) if grouped else ()
    b, t = UOp.range(blocks, len(g)), UOp.range(tiles, len(g) + 1)
    # the tile's rows and lanes are unrolled (UPCAST) ranges of their own: TILE x lanes sums held in registers
    tr, j = UOp.range(TILE, len(g) + 2, AxisType.UPCAST), UOp.range(lanes, len(g) + 3, AxisType.UPCAST)
    i = UOp.range(kc, len(g) + 4, AxisType.REDUCE)
    r, at = t * TILE + tr, i + k0 if k0 else i
    xi = (*g, at, r.minimum(rows - 1)) if transposed else (*g, r.minimum(rows - 1), at)
    acc = (w[(*g, b, at, j)] * x[xi]).reduce(i, arg=Ops.ADD)
    if previous: acc = acc + previous[0][(*g, r, b * lanes + j)]
    split = 0 if grouped and groups % threads == 0 else len(g) if blocks % threads == 0 else None
    opts = (Opt(OptOps.THREAD, split, threads),) if threads > 1 and split is not None else ()
    name = f"gemm{'t' if transposed else ''}_{f'{groups}x' if grouped else ''}{rows}_{blocks * lanes}_{k}{f'_{k0}' if part else ''}"
    info = KernelInfo(name=name, opts_to_apply=opts)
    return to_program(y[(*g, r, b * lanes + j)].store(acc).end(*g, b, t, tr, j).sink(arg=info), _renderer(device, lanes))
  return kernel


def gemm_renders(device: str) -> bool:
  """Whether this device's renderer (the one DEV picks now) compiles the GEMM kernel: clang's C and LLVM's IR do.
  tinygrad-0.14: the X86 renderer fails this kernel's verification (an AFTER over its address instructions)."""
  return isinstance(Device[device].renderer, (ClangRenderer, LLVMRenderer))


GEMM_ROWS = 64  # rows from which a float32 product on CPU is the GEMM (tfm.nn.linear: inference and training)
GEMM_MIN = 1 << 16   # numbers in a weight from which it is (a smaller product takes microseconds either way)
GEMM_WORK = 1 << 24   # or multiply-adds (rows x weight) from which it is: a training batch's 128 x 128 projections
ATTENTION_ROWS = 32   # queries from which attention's two products are gemm_nt / gemm_nn (a decode step has one)


def gemm_fits(x: Tensor, w: Tensor) -> bool:
  """Whether x (..., in) @ w.T is the GEMM: float32 operands, GEMM_ROWS rows or more of static shape, a weight of
  GEMM_MIN numbers or more (or GEMM_WORK multiply-adds), on one device whose renderer compiles it (CPU); at inference and
  in training alike."""
  rows = math.prod(x.shape[:-1])
  return (isinstance(rows, int) and rows >= GEMM_ROWS and x.dtype == w.dtype == dtypes.float32
          and (w.numel() >= GEMM_MIN or rows * w.numel() >= GEMM_WORK)
          and serial_reductions(x.device) and gemm_renders(x.device))


def gemm_attends(q: Tensor, k: Tensor) -> bool:
  """Whether attention's products over these queries (..., Tq, hd) and keys (..., Tk, hd) are tfm's GEMM (at inference
  and in training: their gradients are GEMMs too): float32, static shapes of ATTENTION_ROWS queries or more, on one
  device whose renderer compiles it (CPU)."""
  return (q.dtype == k.dtype == dtypes.float32 and all(isinstance(n, int) for n in (*q.shape, *k.shape))
          and q.shape[-2] >= ATTENTION_ROWS and serial_reductions(q.device) and gemm_renders(q.device))


def gemm(x: Tensor, w: Tensor, packed: Tensor | None = None) -> Tensor:
  """x @ w.T for float32 x (rows, in) and w (out, in) on a CPU device, by gemm_kernel. `packed`: w already in
  gemm_layout (its blocks as gemm_blocks counts them); without it the layout is computed in the same graph, one read
  and one write of the weight per call (a few percent of the product at 64 rows and more)."""
  (rows, k), out, device = x.shape, w.shape[0], x.device
  lanes, threads = vector_floats(), cores(device)
  if packed is None: packed = gemm_layout(w, lanes, gemm_blocks(out, lanes, threads)).contiguous()
  # rows whose length is a multiple of 1 KiB map a tile's rows to the same few L1 sets (8 KiB apart at 2048 inputs: all
  # 12 in one set of 8 ways): padded by one vector, they fall in different sets
  x = (x.pad(((0, 0), (0, lanes))) if k % 256 == 0 else x).contiguous()
  blocks, shape = packed.shape[0], (-(-rows // TILE) * TILE, packed.shape[0] * lanes)
  if not TRAINING and k > (kc := k_block(lanes)):   # at inference, the reduction in parts (k_block)
    y = None
    for k0 in range(0, k, kc):
      fxn = gemm_kernel(rows, k, blocks, lanes, threads, device, part=(k0, min(kc, k - k0)))
      y = Tensor.empty(*shape, dtype=x.dtype, device=device).custom_kernel(packed, x, *([] if y is None else [y]), fxn=fxn)[0]
    return y[:rows, :out]
  fxn = gemm_kernel(rows, k, blocks, lanes, threads, device)
  y = Tensor.empty(*shape, dtype=x.dtype, device=device)
  return y.custom_kernel(packed, x, fxn=fxn, grad_fxn=_gemm_gradient)[0][:rows, :out]


def gemm_tn(a: Tensor, b: Tensor) -> Tensor:
  """a.T @ b for float32 a (k, rows) and b (k, out) on a CPU device: a weight's gradient G^T X, both read as they are
  stored (the tokens, the reduced axis, leading), by gemm_kernel with x transposed: transposing G first was a copy read
  column by column (a kernel as slow as the product at 2048 tokens x 512)."""
  (k, rows), out, device = a.shape, b.shape[1], a.device
  lanes, threads = vector_floats(), cores(device)
  blocks = gemm_blocks(out, lanes, threads)
  packed = b.pad(((0, 0), (0, blocks * lanes - out))).reshape(k, blocks, lanes).permute(1, 0, 2).contiguous()
  fxn = gemm_kernel(rows, k, blocks, lanes, threads, device, transposed=True)
  y = Tensor.empty(-(-rows // TILE) * TILE, blocks * lanes, dtype=a.dtype, device=device)
  return y.custom_kernel(packed, a.contiguous(), fxn=fxn)[0][:rows, :out]


def _gemm_gradient(grad: UOp, call: UOp) -> tuple[UOp | None, ...]:
  """The gradients of gemm's kernel for training: dX = G W and dW = G^T X, each a GEMM again, dW laid out as the packed
  weight (autograd takes it back to the weight through the layout's reshapes)."""
  packed, x = (Tensor(u) for u in call.src[2:])   # tinygrad-0.14: a custom kernel's CALL holds (program, *its buffers)
  blocks, k, lanes = packed.shape
  g = Tensor(grad)[:x.shape[0]]   # the rows past x's re-read its last row: their outputs were sliced off, their grads are 0
  dx = gemm(g, packed.permute(1, 0, 2).reshape(k, blocks * lanes))                     # G (rows, out) @ W (out, in)
  dx = dx.pad(((0, 0), (0, x.shape[1] - k)))   # x as the kernel read it: its rows maybe padded (gemm)
  dw = gemm_tn(g, x[:, :k]).reshape(blocks, lanes, k).permute(0, 2, 1)                # G^T X, as (blocks, in, lanes)
  return (None, dw.uop, dx.uop)


def _grouped(a: Tensor, packed: Tensor, out: int, transposed: bool = False) -> Tensor:
  """a (..., rows, k) times a packed (groups, blocks, k, lanes) per group of a's leading axes -> (..., rows, out);
  `transposed`: a is (..., k, rows), read as stored."""
  lead, (rows, k) = a.shape[:-2], a.shape[:-3:-1] if transposed else a.shape[-2:]
  groups, blocks, _, lanes = packed.shape
  fxn = gemm_kernel(rows, k, blocks, lanes, cores(a.device), a.device, groups, transposed)
  y = Tensor.empty(groups, -(-rows // TILE) * TILE, blocks * lanes, dtype=a.dtype, device=a.device)
  a = a.reshape(groups, *a.shape[-2:]).contiguous()
  y = y.custom_kernel(packed.contiguous(), a, fxn=fxn, grad_fxn=None if transposed else _grouped_gradient)[0]
  return y[:, :rows, :out].reshape(*lead, rows, out)


def _grouped_gradient(grad: UOp, call: UOp) -> tuple[UOp | None, ...]:
  """The gradients of _grouped's kernel, per group as _gemm_gradient's: dA = G W (gemm_nn), dW = G^T A (_grouped with
  G read transposed), laid out as the packed operand."""
  packed, a = (Tensor(u) for u in call.src[2:])   # tinygrad-0.14: a custom kernel's CALL holds (program, *its buffers)
  groups, blocks, k, lanes = packed.shape
  g = Tensor(grad)[:, :a.shape[1]]   # rows past a's re-read its last row: their outputs were sliced off, their grads are 0
  da = gemm_nn(g, packed.permute(0, 1, 3, 2).reshape(groups, blocks * lanes, k))
  dw = _grouped(g, _nn_layout(a, lanes), k, transposed=True)                       # (groups, out, k)
  return (None, dw.reshape(groups, blocks, lanes, k).permute(0, 1, 3, 2).uop, da.uop)


def _nn_layout(b: Tensor, lanes: int) -> Tensor:
  """b (groups, k, n) as the packed operand of a @ b: (groups, blocks, k, lanes), n padded to whole vectors."""
  groups, k, n = b.shape
  blocks = -(-n // lanes)
  return b.pad(((0, 0), (0, 0), (0, blocks * lanes - n))).reshape(groups, k, blocks, lanes).permute(0, 2, 1, 3)


def gemm_nt(a: Tensor, b: Tensor) -> Tensor:
  """a @ b.transpose(-2, -1) for float32 a (..., M, K) and b (..., N, K) on a CPU device (attention's scores: the keys
  are each group's weight), by gemm_kernel over the leading axes' groups; b's layout is computed in the same graph."""
  *lead, n, k = b.shape
  lanes, groups = vector_floats(), math.prod(lead)
  blocks = -(-n // lanes)
  packed = b.reshape(groups, n, k).pad(((0, 0), (0, blocks * lanes - n), (0, 0))).reshape(groups, blocks, lanes, k).permute(0, 1, 3, 2)
  return _grouped(a, packed, n)


def gemm_nn(a: Tensor, b: Tensor) -> Tensor:
  """a @ b for float32 a (..., M, K) and b (..., K, N) on a CPU device (attention's weighted values), as gemm_nt: b's
  rows are already `lanes` outputs side by side, so its layout is a reshape of b padded to whole vectors."""
  *lead, k, n = b.shape
  return _grouped(a, _nn_layout(b.reshape(math.prod(lead), k, n), vector_floats()), n)


@functools.cache
def column_sums_kernel(rows: int, blocks: int, lanes: int, threads: int, device: str):
  """The custom kernel y[b*lanes + j] = sum_i x[i, b*lanes + j]: a vector of `lanes` columns summed down the rows, each
  row's `lanes` numbers one load; the blocks split over the cores."""
  def kernel(y: UOp, x: UOp) -> UOp:
    b, j, i = UOp.range(blocks, 0), UOp.range(lanes, 1, AxisType.UPCAST), UOp.range(rows, 2, AxisType.REDUCE)
    acc = x[i, b * lanes + j].reduce(i, arg=Ops.ADD)
    opts = (Opt(OptOps.THREAD, 0, threads),) if threads > 1 and blocks % threads == 0 else ()
    info = KernelInfo(name=f"column_sums_{rows}_{blocks * lanes}", opts_to_apply=opts)
    return to_program(y[b * lanes + j].store(acc).end(b, j).sink(arg=info), _renderer(device, lanes))
  return kernel


def sums_fit(x: Tensor) -> bool:
  """Whether column_sums computes x's sums over its leading axes: float32, static shape, on one device whose renderer
  compiles tfm's CPU kernels."""
  return (x.dtype == dtypes.float32 and all(isinstance(n, int) for n in x.shape) and serial_reductions(x.device)
          and gemm_renders(x.device))


def column_sums(x: Tensor) -> Tensor:
  """x (..., n) summed over every axis but the last, for a float32 x on a CPU device: the gradient of a bias or of a
  norm's gain and shift. tinygrad's own reduction walks each column down the rows, one number per cache line read
  (6 ms for 2048 x 512 where this takes well under one)."""
  n, device = x.shape[-1], x.device
  lanes, threads = vector_floats(), cores(device)
  blocks = gemm_blocks(n, lanes, threads)
  x = x.reshape(-1, n)
  x = (x if blocks * lanes == n else x.pad(((0, 0), (0, blocks * lanes - n)))).contiguous()
  fxn = column_sums_kernel(x.shape[0], blocks, lanes, threads, device)
  return Tensor.empty(blocks * lanes, dtype=x.dtype, device=device).custom_kernel(x, fxn=fxn)[0][:n]
