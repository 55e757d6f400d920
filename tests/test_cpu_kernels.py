"""tfm.runtime.cpu_kernels: the log-softmax over a vocabulary whose exponentials are a kernel of their own, compiled by tfm with
scalar loads, equals the float64 one; below a vocabulary's size it is tinygrad's. The FFN's activations compiled the
same way equal tinygrad's."""
from __future__ import annotations

import numpy as np
import pytest
from tinygrad import Context, Tensor
from tinygrad.uop.ops import Ops

from tfm.runtime.cpu_kernels import ELEMENTS, WIDE, activated, log_softmax, logsumexp
from tfm.nn.layers import ACTIVATION_FUNCTIONS

RNG = np.random.default_rng(0)


def expected_logsumexp(x: np.ndarray) -> np.ndarray:
  x = x.astype(np.float64)
  top = x.max(-1, keepdims=True)
  return top + np.log(np.exp(x - top).sum(-1, keepdims=True))


def kernels(t: Tensor) -> list:
  return [call.src[0] for call in t.linear_with_vars()[0].src if call.op is Ops.CALL and call.src[0].op is not Ops.COPY]


@pytest.mark.parametrize("n, own_kernel", [(WIDE + 5, True), (100, False)])
def test_log_softmax_is_the_float64_one_with_its_exponentials_compiled_by_tfm_over_a_vocabulary(n, own_kernel):
  x = (RNG.standard_normal((2, 3, n)) * 4).astype(np.float32)
  x[0, 1, :7] = -np.inf   # suppressed tokens: exp(-inf) = 0, their log-prob stays -inf
  t = Tensor(x, device="CPU").realize()
  # the kernels, looked at on another input of the shape (a tensor whose kernels were listed is not run after)
  programs = [k for k in kernels(log_softmax(Tensor.empty(*x.shape, device="CPU").realize())) if k.op is Ops.PROGRAM]
  assert [p.arg.name for p in programs] == ([f"exp_6_{n}"] if own_kernel else [])
  if own_kernel: assert "float4" not in next(u.arg for u in programs[0].src if u.op is Ops.SOURCE)
  got = log_softmax(t).numpy()
  assert np.isneginf(got[0, 1, :7]).all()
  # float32 sums of 8,197 terms in order: 1.6e-5 off the float64 values, tinygrad's own log_softmax the same
  np.testing.assert_allclose(got, x - expected_logsumexp(x), rtol=0, atol=5e-5)
  np.testing.assert_allclose(got, t.log_softmax(-1).numpy(), rtol=0, atol=2e-6)
  np.testing.assert_allclose(logsumexp(t).numpy(), expected_logsumexp(x), rtol=0, atol=5e-5)


@pytest.mark.parametrize("fn", [ACTIVATION_FUNCTIONS[name] for name in ("swish", "gelu", "gelu_tanh")], ids=["swish", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("elements, own_kernel", [(ELEMENTS, True), (ELEMENTS // 2, False)])
def test_an_activation_compiled_by_tfm_is_tinygrads(fn, elements, own_kernel):
  x = (RNG.standard_normal((2, 4, elements // 8)) * 3).astype(np.float32)
  programs = [k for k in kernels(activated(Tensor.empty(*x.shape, device="CPU").realize(), fn)) if k.op is Ops.PROGRAM]
  assert [p.arg.name for p in programs] == ([f"act_8_{elements // 8}"] if own_kernel else [])
  t = Tensor(x, device="CPU").realize()
  got = activated(t, fn).numpy()
  assert got.shape == x.shape
  np.testing.assert_allclose(got, fn(t).numpy(), rtol=1e-6, atol=1e-6)


def test_an_activation_under_training_is_tinygrads_own_kernel():
  with Context(TRAINING=1):
    swish = ACTIVATION_FUNCTIONS["swish"]
    assert not [k for k in kernels(activated(Tensor.empty(8, ELEMENTS // 8, device="CPU").realize(), swish)) if k.op is Ops.PROGRAM]
