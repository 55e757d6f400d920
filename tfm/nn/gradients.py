"""Products and sums for training whose gradients tfm computes itself, because tinygrad 0.14's autograd compiles them
slowly: each is a tinygrad `function` whose grad_fxn gives its gradient. Forward, each is the plain expression.

- matmul_wt: x @ w.T, dW = G^T X from G^T and X^T made contiguous (autograd reduces over a strided axis, ~3x slower).
- add_bias, affine: y + b and x * w + b (a norm's gain and shift), their gradients' sums over the rows by
  tfm.runtime.gemm.column_sums on CPU (autograd sums each column down the rows, a cache line per number).
"""
from __future__ import annotations

from tinygrad import Tensor
from tinygrad.function import function
from tinygrad.uop.ops import UOp

from tfm.runtime.gemm import column_sums


def _matmul_wt_gradient(grad: UOp, call: UOp) -> tuple[UOp, UOp]:
  x, w = (Tensor(u) for u in call.src[1:])  # tinygrad-0.14: a function's CALL uop holds its arguments at src[1:]
  g = Tensor(grad)
  g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])  # (tokens, out), (tokens, in)
  dx = (g2 @ w).reshape(x.shape)
  dw = g2.T.contiguous() @ x2.T.contiguous().T  # (out, tokens) @ (tokens, in), both read along the tokens
  return dx.uop, dw.uop


# tinygrad-0.14: autograd's dW reduces over a strided axis, ~3x slower than a contiguous matmul
@function(grad_fxn=_matmul_wt_gradient)
def matmul_wt(x: Tensor, w: Tensor) -> Tensor:
  """x @ w.T, differentiated by `_matmul_wt_gradient`."""
  return x @ w.T


def _bias_gradient(grad: UOp, call: UOp) -> tuple[UOp, UOp]:
  return grad, column_sums(Tensor(grad)).uop


# tinygrad-0.14: autograd's bias gradient sums each column down the rows, a cache line per number
@function(grad_fxn=_bias_gradient)
def add_bias(y: Tensor, b: Tensor) -> Tensor:
  """y + b, its bias gradient summed by tfm's kernel (tfm.runtime.gemm.column_sums)."""
  return y + b


def _affine_gradient(grad: UOp, call: UOp) -> tuple[UOp, UOp, UOp]:
  x, w = (Tensor(u) for u in call.src[1:3])
  g = Tensor(grad)
  return (g * w).uop, column_sums(g * x).uop, column_sums(g).uop


@function(grad_fxn=_affine_gradient)
def affine(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
  """x * w + b over the last axis (a norm's gain and shift), its gain and shift gradients summed by column_sums."""
  return x * w + b
