"""tfm.linear.product: the form a Linear's product takes per device and row count, and that every form is x @ w.T."""
from __future__ import annotations

import numpy as np
import pytest
from tinygrad import Context, Tensor, dtypes

from tfm.linear import LANES, WIDE, Linear, product

RNG = np.random.default_rng(0)


def operands(rows: int, k: int, out: int, device: str = "CPU", dtype=dtypes.float32):
  x, w = RNG.standard_normal((rows, k)).astype(np.float32), RNG.standard_normal((out, k)).astype(np.float32)
  return x, w, Tensor(x, device=device).cast(dtype), Tensor(w, device=device).cast(dtype)


@pytest.mark.parametrize("rows, k, out, reshaped", [
  (1, 2 * LANES, 48, True),        # one row: split into LANES partial sums
  (4, 2 * LANES, 2 * LANES, True),  # a few rows, in >= out: split
  (4, 2 * LANES, 48, False),        # a few rows, in < out: as it is
  (8, 2 * LANES, WIDE, True),       # many rows, a vocabulary of outputs: computed transposed
  (8, 2 * LANES, 48, False),        # many rows, few outputs: as it is
  (1, LANES + 8, 48, False),        # in not a multiple of LANES: as it is
])
def test_a_cpu_product_takes_its_form_and_equals_x_wt(rows, k, out, reshaped):
  x, w, xt, wt = operands(rows, k, out)
  y = product(xt, wt)
  assert (y.uop.key != (xt @ wt.T).uop.key) == reshaped
  np.testing.assert_allclose(y.numpy(), x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-5, atol=1e-5)


def test_int8_weights_over_many_rows_are_not_read_transposed():
  _, w, xt, _ = operands(8, 2 * LANES, WIDE)
  q = Tensor(np.clip(np.rint(w * 20), -127, 127).astype(np.int8), device="CPU")
  y = product(xt, q)
  assert y.uop.key == (xt @ q.cast(dtypes.float32).T).uop.key
  np.testing.assert_allclose(y.numpy(), xt.numpy().astype(np.float64) @ q.numpy().T.astype(np.float64), rtol=1e-5, atol=1e-4)


def test_a_split_float16_product_accumulates_in_float32_and_returns_float16():
  x, w, xt, wt = operands(1, 4 * LANES, 40, dtype=dtypes.float16)
  y = product(xt, wt)
  assert y.dtype == dtypes.float16 and y.uop.key != (xt @ wt.T).uop.key
  expect = x.astype(np.float16).astype(np.float64) @ w.astype(np.float16).astype(np.float64).T
  np.testing.assert_allclose(y.float().numpy(), expect, rtol=2e-3, atol=2e-2)


def test_devices_with_local_memory_and_training_keep_x_wt():
  for device in ("PYTHON", "CL"):
    _, _, xt, wt = operands(1, 2 * LANES, 48, device=device)
    assert product(xt, wt).uop.key == (xt @ wt.T).uop.key
  _, _, xt, wt = operands(1, 2 * LANES, 48)
  with Context(TRAINING=1): assert product(xt, wt).uop.key == (xt @ wt.T).uop.key


def test_a_linear_at_one_row_gives_tinygrads_linear():
  layer = Linear(2 * LANES, 24)
  layer.weight, layer.bias = Tensor(RNG.standard_normal((24, 2 * LANES)).astype(np.float32)), Tensor(RNG.standard_normal(24).astype(np.float32))
  x = Tensor(RNG.standard_normal((1, 1, 2 * LANES)).astype(np.float32))
  np.testing.assert_allclose(layer(x).numpy(), x.linear(layer.weight.T, layer.bias).numpy(), rtol=1e-6, atol=1e-6)
