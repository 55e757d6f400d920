"""tfm.nn.linear.product: the form a Linear's product takes per device and row count, and that every form is x @ w.T;
packed weights (Linear.pack): their products, when they are read, and that they are no model state."""
from __future__ import annotations

import functools

import numpy as np
import pytest
from tinygrad import Context, Tensor, dtypes
from tinygrad.codegen.opt import Opt, OptOps

from tinygrad.nn.state import get_state_dict
from tinygrad.uop.ops import Ops

from tfm.nn.linear import LANES, PACK, PACK_MIN, WIDE, Linear, _packed_opts, pack_layers, packable, packed_products, product

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
  # +4096 and -4096 in different partial sums, small quarters beside them: in float16 (4 apart at 4096) each quarter
  # added to +-4096 is lost; in float32 every partial sum is exact, and so is the result (small, exact in float16)
  k, out = 4 * LANES, 40
  w = RNG.integers(1, 4, (out, k)).astype(np.float32) / 4
  w[:, 0], w[:, -1] = 4096, -4096
  x = np.ones((1, k), np.float32)
  y = product(Tensor(x, device="CPU").cast(dtypes.float16), Tensor(w, device="CPU").cast(dtypes.float16))
  assert y.dtype == dtypes.float16 and y.uop.key != (Tensor(x).cast(dtypes.float16) @ Tensor(w).cast(dtypes.float16).T).uop.key
  expect = x.astype(np.float64) @ w.astype(np.float64).T
  in_float16 = np.array([[functools.reduce(lambda acc, v: np.float16(acc + v), row.astype(np.float16), np.float16(0)) for row in w]])
  assert np.abs(in_float16 - expect).min() >= 0.5   # what a float16 accumulator, term after term, gives: every output off
  np.testing.assert_array_equal(y.float().numpy(), expect)


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


# --- packed weights: decoding's products on CPU ---------------------------------------------------------------------

def packed_layer(out: int, k: int, int8: bool = False) -> Linear:
  layer = Linear(k, out)
  layer.weight = Tensor(RNG.standard_normal((out, k)).astype(np.float32), device="CPU").realize()
  layer.bias = Tensor(RNG.standard_normal(out).astype(np.float32), device="CPU").realize()
  if int8: layer.quantize()
  layer.pack()
  layer.repack().realize()
  return layer


def dequantized(layer: Linear) -> np.ndarray:
  w = layer.weight.numpy().astype(np.float64)
  return w if layer.scale is None else w * layer.scale.numpy().astype(np.float64)[:, None]


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_a_packed_product_equals_x_wt_plus_b(rows, int8):
  layer = packed_layer(44, 2 * PACK + 3, int8)   # outputs not a multiple of PACK: padding rows, sliced off
  x = RNG.standard_normal((rows, 2 * PACK + 3)).astype(np.float32)
  with packed_products(): y = layer(Tensor(x, device="CPU"))
  assert y.shape == (rows, 44)
  expect = x.astype(np.float64) @ dequantized(layer).T + layer.bias.numpy()
  np.testing.assert_allclose(y.numpy(), expect, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows, out, k, threaded", [(8, 64, 32, False), (1, 64, 32, False), (8, 1024, 512, True), (1, 8192, 512, True)])
def test_a_packed_product_is_one_kernel_with_a_vector_of_outputs_threaded_when_large(rows, out, k, threaded):
  layer = packed_layer(out, k)
  x = Tensor(RNG.standard_normal((rows, k)).astype(np.float32), device="CPU")
  with packed_products(): y = layer(x)
  kernels = [call.src[0] for call in y.linear_with_vars()[0].src if call.op is Ops.CALL and call.src[0].op is not Ops.COPY]
  # at one row the kernel adds the bias itself; over several rows the kernel that reads the product does
  assert len(kernels) == (1 if rows == 1 else 2)
  product_kernel = kernels[0]
  assert product_kernel.arg.name == f"packed_{rows}_{out}_{k}"
  # over several rows, compiled by tfm with scalar loads in C (clang picks the vector width); at one row by tinygrad
  assert product_kernel.op is (Ops.SINK if rows == 1 else Ops.PROGRAM)
  opts = product_kernel.arg.opts_to_apply if rows == 1 else product_kernel.src[0].arg.applied_opts
  assert opts == _packed_opts(rows, out // PACK, k, "CPU")
  assert Opt(OptOps.UPCAST, 1 if rows == 1 else 2, PACK) in opts
  assert Opt(OptOps.UPCAST, 1, 8 if rows > 1 else 4) in opts or rows == 1 and Opt(OptOps.UPCAST, 0, 4) in opts
  assert any(opt.op is OptOps.THREAD for opt in opts) == threaded
  if rows > 1: assert "float4" not in next(u.arg for u in product_kernel.src if u.op is Ops.SOURCE)


@pytest.mark.parametrize("rows, tile", [(32, 8), (12, 4), (6, 2), (3, 1)])
def test_a_packed_product_over_several_rows_takes_the_largest_tile_of_rows_that_divides_them(rows, tile):
  opts = _packed_opts(rows, 64, 512, "CPU")
  assert [opt for opt in opts if opt.op is OptOps.UPCAST and opt.axis == 1] == ([Opt(OptOps.UPCAST, 1, tile)] if tile > 1 else [])


def test_a_packed_copy_is_read_only_inside_packed_products_and_refreshed_by_repack():
  layer = packed_layer(24, 16)
  x = Tensor(RNG.standard_normal((1, 16)).astype(np.float32), device="CPU")
  layer.weight.assign(layer.weight * 2).realize()   # in place: the packed copy is now out of date
  expect = x.numpy().astype(np.float64) @ layer.weight.numpy().T.astype(np.float64) + layer.bias.numpy()
  np.testing.assert_allclose(layer(x).numpy(), expect, rtol=1e-5, atol=1e-4)   # outside: the weight itself
  with packed_products():
    assert not np.allclose(layer(x).numpy(), expect, atol=1e-3)
    layer.repack().realize()
    np.testing.assert_allclose(layer(x).numpy(), expect, rtol=1e-5, atol=1e-4)


def test_packed_copies_are_no_model_state():
  layer = packed_layer(PACK_MIN // 32, 32)
  assert layer.packed is not None and pack_layers([layer]) == [layer]
  assert set(get_state_dict(layer)) == {"weight", "bias"}


def test_weights_pack_on_serial_reduction_devices_when_float32_or_int8_and_large():
  big = Tensor.empty(PACK_MIN // 32, 32, device="CPU")
  assert packable(big) and packable(big.cast(dtypes.int8)) and not packable(big.cast(dtypes.float16))
  assert not packable(Tensor.empty(PACK_MIN // 64, 32, device="CPU"))
  assert not packable(Tensor.empty(PACK_MIN // 32, 32, device="CL")) and not packable(Tensor.empty(PACK_MIN // 32, 32, device="PYTHON"))


def test_a_layer_that_no_longer_packs_is_unpacked():
  layer = packed_layer(PACK_MIN // 32, 32)
  layer.weight = layer.weight.cast(dtypes.float16).realize()
  assert pack_layers([layer]) == [] and layer.packed is None
