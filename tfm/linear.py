"""Linear: tinygrad's nn.Linear (same weights, same names, same inference kernels) with a training-time gradient
whose weight part runs two to three times faster.

y = x W^T + b. The weight's gradient is G^T X, a reduction over the tokens: autograd expresses it over the leading
axis of G and X as they are stored, and tinygrad 0.14 compiles that reduction, whose operands are strided along the
reduced axis, at about a third of the speed of a matmul whose operands are contiguous along it (measured in
docs/PERFORMANCE.md, "Where the time goes"). So under training the product is a tinygrad `function` with its own
gradient: dX = G W as autograd computes it, dW = G^T (X^T)^T with G^T and X^T made contiguous.

Both classes here are built with unset (empty) weights, which the model initialises or a loader fills.
"""
from __future__ import annotations

from tinygrad import Tensor, nn
from tinygrad.function import function
from tinygrad.helpers import TRAINING
from tinygrad.uop.ops import UOp


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


class Linear(nn.Linear):
  """nn.Linear whose weight gradient is computed from contiguous transposes (module docstring); outside training
  (no Context(TRAINING=1)) it is tinygrad's Linear, so inference graphs and kernels are unchanged.

  Built with unset (empty) weights: tinygrad's lazy uniform draws cost milliseconds of graph building per layer and
  were always replaced, by the model's own initialisation or by a loader."""

  def __init__(self, in_features: int, out_features: int, bias: bool = True):
    self.weight = Tensor.empty(out_features, in_features)
    self.bias = Tensor.empty(out_features) if bias else None

  def __call__(self, x: Tensor) -> Tensor:
    if not TRAINING: return super().__call__(x)
    y = matmul_wt(x, self.weight)
    return y if self.bias is None else y + self.bias


class Embedding(nn.Embedding):
  """tinygrad's Embedding (same weight name, same lookup) built with an unset table, as Linear is."""

  def __init__(self, vocab_size: int, embed_size: int):
    self.weight = Tensor.empty(vocab_size, embed_size)
