"""tfm.runtime.gemm: the product of many rows on CPU equals x @ w.T for any rows and outputs (tiles and vectors padded),
and tfm.runtime.machine's vector width follows the CPU's flags; tfm.nn.linear.product dispatches to it."""
from __future__ import annotations

import numpy as np
import pytest
from tinygrad import Context, Tensor, dtypes

from tfm.nn.linear import product
from tfm.runtime.gemm import (ATTENTION_ROWS, GEMM_MIN, GEMM_ROWS, TILE, column_sums, gemm, gemm_attends, gemm_blocks, gemm_layout,
                              gemm_nn, gemm_nt, gemm_renders)
from tfm.runtime.machine import cores, vector_floats

RNG = np.random.default_rng(0)


def operands(rows: int, k: int, out: int):
  x, w = RNG.standard_normal((rows, k)).astype(np.float32), RNG.standard_normal((out, k)).astype(np.float32)
  return x, w, Tensor(x, device="CPU"), Tensor(w, device="CPU")


@pytest.mark.parametrize("rows, k, out", [
  (TILE, 32, 64),           # one tile of rows
  (TILE * 3 + 5, 40, 37),   # rows not a multiple of the tile, outputs not a multiple of the vector
  (7, 17, 3),               # fewer rows than a tile, odd input width
  (70, 384, 200),           # an input width that is not a power of two
])
def test_gemm_equals_x_wt(rows, k, out):
  x, w, xt, wt = operands(rows, k, out)
  np.testing.assert_allclose(gemm(xt, wt).numpy(), x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-5, atol=1e-4)


def test_gemm_from_a_packed_copy_equals_gemm_from_the_weight():
  x, w, xt, wt = operands(30, 48, 50)
  lanes = vector_floats()
  packed = gemm_layout(wt, lanes, gemm_blocks(50, lanes, cores("CPU"))).contiguous().realize()
  np.testing.assert_allclose(gemm(xt, wt, packed).numpy(), gemm(xt, wt).numpy(), rtol=0, atol=0)


def test_gemm_blocks_are_a_multiple_of_the_cores_and_cover_the_outputs():
  assert gemm_blocks(37, 8, 2) == 6 and gemm_blocks(1152, 16, 2) == 72 and gemm_blocks(5, 4, 1) == 2


@pytest.mark.parametrize("flags, lanes", [({"avx512f", "avx2", "fma"}, 16), ({"avx2", "fma"}, 8), ({"avx"}, 4), ({"neon", "asimd"}, 4), (set(), 4)])
def test_vector_width_follows_the_cpu_flags(flags, lanes):
  assert vector_floats(frozenset(flags)) == lanes


def test_a_many_row_float32_product_on_cpu_is_the_gemm_and_equals_x_wt():
  x, w, xt, wt = operands(GEMM_ROWS, 256, GEMM_MIN // 256)
  y = product(xt.reshape(2, GEMM_ROWS // 2, 256), wt)
  assert y.shape == (2, GEMM_ROWS // 2, GEMM_MIN // 256) and y.uop.key != (xt @ wt.T).uop.key
  np.testing.assert_allclose(y.numpy().reshape(GEMM_ROWS, -1), x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-5, atol=1e-4)


def test_int8_weights_keep_x_wt():
  _, w, xt, _ = operands(GEMM_ROWS, 256, GEMM_MIN // 256)
  q = Tensor(np.clip(np.rint(w * 20), -127, 127).astype(np.int8), device="CPU")
  assert product(xt, q).uop.key == (xt @ q.cast(dtypes.float32).T).uop.key


def test_a_training_linear_on_cpu_is_the_gemm_with_gradients_that_are_gemms_too():
  """dX = G W and dW = G^T X through gemm's gradient: equal to numpy's, rows past a tile and outputs past a vector."""
  from tfm.nn.linear import Linear
  x, w, xt, wt = operands(GEMM_ROWS + 5, 256, GEMM_MIN // 256 + 3)
  g = RNG.standard_normal((GEMM_ROWS + 5, GEMM_MIN // 256 + 3)).astype(np.float32)
  layer = Linear(256, w.shape[0])
  layer.weight, layer.bias = wt, None
  with Context(TRAINING=1):
    y = layer(xt)
    assert y.uop.key != (xt @ wt.T).uop.key
    (y * Tensor(g, device="CPU")).sum().backward()
  np.testing.assert_allclose(y.numpy(), x.astype(np.float64) @ w.T, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(xt.grad.numpy(), g.astype(np.float64) @ w, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(wt.grad.numpy(), g.T.astype(np.float64) @ x, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("lanes", [4, 8, 16])
def test_gemm_is_correct_at_every_vector_width(lanes, monkeypatch):
  monkeypatch.setattr("tfm.runtime.gemm.vector_floats", lambda: lanes)
  x, w, xt, wt = operands(TILE + 3, 24, 21)
  np.testing.assert_allclose(gemm(xt, wt).numpy(), x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("target, renders", [("CPU:LLVM", True), ("CPU:X86", False)])
def test_each_cpu_renderer_computes_many_row_products_right(target, renders):
  """CPU:LLVM compiles the GEMM; CPU:X86 cannot (gemm_renders) and keeps x @ w.T: either way, the product is right."""
  backends = pytest.importorskip("backends")
  if not backends.probe(target).runs: pytest.skip(f"{target} does not run here")
  x, w, xt, wt = operands(GEMM_ROWS, 256, GEMM_MIN // 256)
  with Context(DEV=target):
    assert gemm_renders("CPU") == renders
    y = product(xt, wt).numpy()
  np.testing.assert_allclose(y, x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("lead, m, n, k", [((2, 3), 37, 29, 24), ((1, 4), TILE, 16, 64), ((2, 1), 5, 70, 17)])
def test_grouped_products_equal_numpys(lead, m, n, k):
  """Attention's two products per head: a @ b^T (scores) and a @ b (weighted values), any rows, outputs and widths."""
  a, b = RNG.standard_normal((*lead, m, k)).astype(np.float32), RNG.standard_normal((*lead, n, k)).astype(np.float32)
  c = RNG.standard_normal((*lead, k, n)).astype(np.float32)
  ta, tb, tc = (Tensor(t, device="CPU") for t in (a, b, c))
  np.testing.assert_allclose(gemm_nt(ta, tb).numpy(), a.astype(np.float64) @ np.swapaxes(b, -1, -2), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(gemm_nn(ta, tc).numpy(), a.astype(np.float64) @ c, rtol=1e-5, atol=1e-4)


def test_attention_over_many_queries_on_cpu_uses_the_gemm_and_equals_the_plain_expression():
  from tfm.nn.attention import scaled_dot_product_attention
  q, k, v = (Tensor(RNG.standard_normal((2, 2, ATTENTION_ROWS + 3, 16)).astype(np.float32), device="CPU") for _ in range(3))
  mask = Tensor(np.tril(np.ones((ATTENTION_ROWS + 3,) * 2, bool)), device="CPU").reshape(1, 1, ATTENTION_ROWS + 3, ATTENTION_ROWS + 3)
  assert gemm_attends(q, k) and not gemm_attends(q[:, :, :1], k)   # a decode step's one query keeps tinygrad's product
  plain = (q @ k.transpose(-2, -1) / 4).float().masked_fill(~mask, -float("inf")).softmax(-1) @ v
  np.testing.assert_allclose(scaled_dot_product_attention(q, k, v, mask).numpy(), plain.numpy(), rtol=1e-5, atol=1e-5)


def test_attention_gradients_through_the_gemm_equal_the_plain_expressions():
  """Under training attention's products are GEMMs too, their gradients (dQ, dK, dV) GEMMs per head: equal to the plain
  expression's, with rows past a tile and keys past a vector."""
  from tfm.nn.attention import scaled_dot_product_attention
  n = ATTENTION_ROWS + 3
  arrays = [RNG.standard_normal((2, 2, n, 16)).astype(np.float32) for _ in range(3)]
  g = Tensor(RNG.standard_normal((2, 2, n, 16)).astype(np.float32), device="CPU")
  mask = Tensor(np.tril(np.ones((n, n), bool)), device="CPU").reshape(1, 1, n, n)
  grads = []
  def plain(q, k, v, m): return (q @ k.transpose(-2, -1) / 4).masked_fill(~m, -float("inf")).softmax(-1) @ v
  for attention in (scaled_dot_product_attention, plain):
    q, k, v = (Tensor(a, device="CPU") for a in arrays)
    with Context(TRAINING=1):
      (attention(q, k, v, mask) * g).sum().backward()
    grads.append([t.grad.numpy() for t in (q, k, v)])
  assert gemm_attends(q, k)
  for ours, plain in zip(*grads): np.testing.assert_allclose(ours, plain, rtol=1e-4, atol=1e-5)


def test_bias_and_norm_gradients_are_column_sums_equal_to_numpys():
  """Under training on CPU a Linear's bias and a LayerNorm's gain and shift get their gradients from column_sums: the
  same numbers as numpy's, over widths that are not whole vectors."""
  from tfm.nn.layers import LayerNorm
  from tfm.nn.linear import Linear
  x, g = RNG.standard_normal((70, 37)).astype(np.float32), RNG.standard_normal((70, 37)).astype(np.float32)
  np.testing.assert_allclose(column_sums(Tensor(g, device="CPU")).numpy(), g.astype(np.float64).sum(0), rtol=1e-5, atol=1e-4)
  layer, norm = Linear(37, 37), LayerNorm(37)
  for t in (layer.weight, layer.bias, norm.weight, norm.bias): t.replace(Tensor(RNG.standard_normal(t.shape).astype(np.float32), device="CPU"))
  with Context(TRAINING=1):
    (norm(layer(Tensor(x, device="CPU"))) * Tensor(g, device="CPU")).sum().backward()
  h = x.astype(np.float64) @ layer.weight.numpy().T + layer.bias.numpy()
  xhat = (h - h.mean(1, keepdims=True)) / np.sqrt(h.var(1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(norm.bias.grad.numpy(), g.sum(0), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(norm.weight.grad.numpy(), (g * xhat).sum(0), rtol=1e-4, atol=1e-4)
  dxhat = g * norm.weight.numpy()
  dh = (dxhat - dxhat.mean(1, keepdims=True) - xhat * (dxhat * xhat).mean(1, keepdims=True)) / np.sqrt(h.var(1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(layer.bias.grad.numpy(), dh.sum(0), rtol=1e-4, atol=1e-4)
