"""The product of many rows on CPU: y = x @ w.T for x (rows, in) and w (out, in), with w read from a packed copy,
(blocks, in, L): L output features interleaved along the input axis, L the machine's float32 lanes
(tfm.runtime.machine.vector_floats: 16 with AVX-512, 8 with AVX2).

The kernel is a tinygrad custom kernel whose loop nest is a register tile of TILE rows x L outputs: per input i, one
vector load of the packed weight and TILE broadcasts of x, TILE multiply-adds into TILE vector accumulators, so clang
builds it from full-width FMAs (`vfmadd231ps zmm, zmm, mem{1to16}` on AVX-512). The blocks of L outputs are split over
the cores (THREAD). Rows that do not fill the last tile read the last row again; their outputs are sliced off. Measured
in docs/PERFORMANCE.md, "Many rows on CPU".
"""
from __future__ import annotations

import copy
import functools

from tinygrad import Device, Tensor, dtypes
from tinygrad.codegen import to_program
from tinygrad.codegen.opt import Opt, OptOps
from tinygrad.renderer.cstyle import ClangRenderer
from tinygrad.renderer.llvmir import LLVMRenderer
from tinygrad.runtime.support.compiler_cpu import ClangCompiler
from tinygrad.uop.ops import AxisType, KernelInfo, Ops, UOp

from tfm.runtime.machine import cores, vector_floats

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


@functools.cache
def gemm_kernel(rows: int, k: int, blocks: int, lanes: int, threads: int, device: str):
  """The custom kernel y[r, b*lanes + j] = sum_i w[b, i, j] x[min(r, rows-1), i] over rows rounded up to TILE, compiled
  for the device (a PROGRAM)."""
  tiles = -(-rows // TILE)
  def kernel(y: UOp, w: UOp, x: UOp) -> UOp:
    b, t = UOp.range(blocks, 0), UOp.range(tiles, 1)
    # the tile's rows and lanes are unrolled (UPCAST) ranges of their own: TILE x lanes sums held in registers
    tr, j, i = UOp.range(TILE, 2, AxisType.UPCAST), UOp.range(lanes, 3, AxisType.UPCAST), UOp.range(k, 4, AxisType.REDUCE)
    r = t * TILE + tr
    acc = (w[b, i, j] * x[r.minimum(rows - 1), i]).reduce(i, arg=Ops.ADD)
    info = KernelInfo(name=f"gemm_{rows}_{blocks * lanes}_{k}", opts_to_apply=(Opt(OptOps.THREAD, 0, threads),) if threads > 1 else ())
    return to_program(y[r, b * lanes + j].store(acc).end(b, t, tr, j).sink(arg=info), _renderer(device, lanes))
  return kernel


def gemm_renders(device: str) -> bool:
  """Whether this device's renderer (the one DEV picks now) compiles the GEMM kernel: clang's C and LLVM's IR do.
  tinygrad-0.14: the X86 renderer fails this kernel's verification (an AFTER over its address instructions)."""
  return isinstance(Device[device].renderer, (ClangRenderer, LLVMRenderer))


def gemm(x: Tensor, w: Tensor, packed: Tensor | None = None) -> Tensor:
  """x @ w.T for float32 x (rows, in) and w (out, in) on a CPU device, by gemm_kernel. `packed`: w already in
  gemm_layout (its blocks as gemm_blocks counts them); without it the layout is computed in the same graph, one read
  and one write of the weight per call (a few percent of the product at 64 rows and more)."""
  (rows, k), out, device = x.shape, w.shape[0], x.device
  lanes, threads = vector_floats(), cores(device)
  if packed is None: packed = gemm_layout(w, lanes, gemm_blocks(out, lanes, threads)).contiguous()
  blocks = packed.shape[0]
  fxn = gemm_kernel(rows, k, blocks, lanes, threads if blocks % threads == 0 else 1, device)
  y = Tensor.empty(-(-rows // TILE) * TILE, blocks * lanes, dtype=x.dtype, device=device).custom_kernel(packed, x.contiguous(), fxn=fxn)[0]
  return y[:rows, :out]
