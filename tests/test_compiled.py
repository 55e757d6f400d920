"""tfm.nn.compiled: a model's forward passes at inference run as a compiled step per input shape, with the numbers of
the plain tinygrad expression, a tensor of its own per call, and the weights as they are now."""
from __future__ import annotations

import numpy as np
from tinygrad import Context, Tensor

import tfm
from tfm.config import VisionConfig
from tfm.nn import compiled
from tfm.nn.base import realized_on

from conftest import DEVICE, randomize


def plain(model, src, tgt) -> np.ndarray:
  return realized_on(model, lambda: model.run_decoder(model.ids(tgt), model.run_encoder(model.ids(src)), model.padding_mask(model.ids(src)))).numpy()


def test_a_forward_pass_is_compiled_once_per_shape_and_equals_the_plain_expression(tiny_config, batch):
  model = randomize(tfm.Transformer(tiny_config, device=DEVICE), seed=3)
  src, tgt = batch
  first, second = model(src, tgt).numpy(), model(src, tgt).numpy()
  calls = list(compiled._CALLS[model].values())
  assert len(calls) == 1 and calls[0].step.launches   # the second call replayed the step captured by the first
  np.testing.assert_allclose(first, plain(model, src, tgt), rtol=0, atol=1e-6)
  assert np.array_equal(first, second)


def test_each_call_returns_a_tensor_of_its_own(tiny_config, batch):
  model = randomize(tfm.Transformer(tiny_config, device=DEVICE), seed=4)
  src, tgt = batch
  a = model.encode(src)
  b = model.encode(src[::-1].copy())
  assert not np.array_equal(a.numpy(), b.numpy())
  np.testing.assert_allclose(a.numpy(), model.encode(src).numpy(), rtol=0, atol=0)


def test_weights_written_in_place_or_replaced_are_the_ones_used(tiny_config, batch):
  model = randomize(tfm.Transformer(tiny_config, device=DEVICE), seed=5)
  src, tgt = batch
  before = model(src, tgt).numpy()
  bias = model.decoder.layers[0].ffn.fc2.bias
  bias.assign(bias + 1.0).realize()   # in place: the captured step reads the same buffer
  np.testing.assert_allclose(model(src, tgt).numpy(), plain(model, src, tgt), rtol=0, atol=1e-6)
  bias.replace(Tensor(np.zeros(bias.shape, np.float32), device=DEVICE).realize())   # a new buffer: a new step
  np.testing.assert_allclose(model(src, tgt).numpy(), plain(model, src, tgt), rtol=0, atol=1e-6)
  assert not np.allclose(model(src, tgt).numpy(), before)


def test_training_keeps_the_lazy_graph(tiny_config, batch):
  model = tfm.Transformer(tiny_config, device=DEVICE)
  with Context(TRAINING=1): out = model(*batch)
  assert not out.uop.is_realized and model not in compiled._CALLS


def test_a_vit_classifies_and_describes_through_compiled_steps():
  Tensor.manual_seed(0)
  vit = tfm.VisionTransformer(VisionConfig.preset("vit-tiny"), device=DEVICE)
  pixels = np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
  logits, features = vit(pixels).numpy(), vit.features(pixels).numpy()
  assert len(compiled._CALLS[vit]) == 2
  x = vit.pixels(pixels)
  np.testing.assert_allclose(logits, realized_on(vit, lambda: vit.run_classifier(x)).numpy(), rtol=0, atol=1e-6)
  np.testing.assert_allclose(features, realized_on(vit, lambda: vit.run_encoder(x)).numpy(), rtol=0, atol=1e-6)
