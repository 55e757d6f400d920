"""int8 weights (Transformer.quantize, tfm.load(..., dtype="int8")): the rows and scales, the int8 model computing
exactly the function of its dequantized weights (forward and the KV-cache decode step), its error against the
float32 model, and the clear refusals (training, saving, a ViT)."""
from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file
from conftest import DEVICE, randomize
from tinygrad import Context, dtypes
from tinygrad.nn.state import get_state_dict

from tfm.nn.base import unique_state
import tfm
from tfm.io import stored
from tfm.io import weights
from tfm import generation as gen
from tfm.nn.linear import linear_layers, quantize_rows

SRC = np.array([[5, 9, 12, 33, 41, 7, 8, 2], [7, 8, 9, 10, 11, 2, 0, 0]], np.int32)
TGT = np.array([[1, 20, 21, 22, 23, 24], [1, 30, 31, 32, 33, 34]], np.int32)


@pytest.fixture(scope="module")
def pair():
  """A tiny float32 model with 70 tokens (the decode step pads its generator to 128 rows) and its int8 twin."""
  config = tfm.TransformerConfig.preset("tiny", vocab_size=70, output_bias=True)
  f32 = randomize(tfm.Transformer(config, device=DEVICE), seed=5)
  return f32, weights.build(config, weights.state_arrays(f32), "the float32 twin", DEVICE, "int8")


def test_rows_round_to_int8_within_half_a_step():
  w = np.random.default_rng(0).standard_normal((6, 40)).astype(np.float32)
  w[3] = 0.0
  q, scale = quantize_rows(w)
  assert q.dtype == np.int8 and scale.dtype == np.float32
  assert np.abs(q).max() == 127 and np.abs(q[3]).max() == 0 and scale[3] == 1.0
  assert (np.abs(q * scale[:, None] - w) <= scale[:, None] / 2 + 1e-7).all()


def test_int8_model_holds_int8_linears_and_float32_embeddings(pair):
  f32, q8 = pair
  assert q8.quantized and not f32.quantized and q8.dtype == dtypes.float32
  layers = linear_layers(q8)
  assert len(layers) == 2 * 4 + 2 * 8 + 2 * 2 + 2 * 2 + 1   # attention projections, FFNs, generator
  assert {layer.weight.dtype for layer in layers} == {dtypes.int8}
  assert q8.src_embed.weight.dtype == dtypes.float32 and q8.generator.weight is not q8.src_embed.weight
  np.testing.assert_array_equal(q8.src_embed.weight.numpy(), f32.src_embed.weight.numpy())   # untied, not changed


def dequantized(q8: tfm.Transformer) -> tfm.Transformer:
  """A float32 model whose Linear weights are the int8 model's rows times their scales (untied: the int8 generator
  is not the embedding)."""
  state = get_state_dict(q8)
  arrays = {name: t.numpy().astype(np.float32) for name, t in unique_state(q8).items() if not name.endswith(".scale")}
  for name, scale in state.items():
    if name.endswith(".scale"):
      weight = name[:-len("scale")] + "weight"
      arrays[weight] = state[weight].numpy().astype(np.float32) * scale.numpy()[:, None]
  arrays["tgt_embed.weight"] = arrays["src_embed.weight"]
  return weights.build(q8.config.replace(tie_embeddings=False), arrays, "dequantized", DEVICE)


def test_int8_forward_is_the_function_of_its_dequantized_weights(pair):
  f32, q8 = pair
  got, plain = q8(SRC, TGT).numpy(), f32(SRC, TGT).numpy()
  np.testing.assert_allclose(got, dequantized(q8)(SRC, TGT).numpy(), rtol=0, atol=1e-4)
  # the quantization error itself, against the float32 model: 12% of the logits' spread at most for this 32-wide
  # random model (measured; opus-mt's width gives about 6%, docs/PERFORMANCE.md), the argmax mostly kept
  assert np.abs(got - plain).max() < 0.2 * plain.std()
  assert (got.argmax(-1) == plain.argmax(-1)).mean() >= 0.9


def test_int8_decode_step_gives_the_int8_forward_log_probs(pair):
  _, q8 = pair
  cached = gen.incremental_logprobs(q8, SRC, TGT)
  full = q8(SRC, TGT).log_softmax(-1).numpy()
  np.testing.assert_allclose(cached, full, rtol=0, atol=1e-5)
  ids = tfm.generate(q8, SRC, max_len=6, min_len=6)
  teacher = q8(SRC, np.concatenate([TGT[:, :1], ids[:, :5]], 1)).numpy().argmax(-1)
  np.testing.assert_array_equal(ids, teacher)


def test_bundled_translator_in_int8_translates_as_in_float32():
  texts = ["3rd of March, 2021", "July 4 1999", "the 1st of January 2000", "Feb 29, 2024", "31.12.1999"]
  f32, q8 = tfm.Translator.bundled(device=DEVICE), tfm.Translator.bundled(device=DEVICE, dtype="int8")
  assert q8.model.quantized
  assert q8.translate(texts) == f32.translate(texts)


def test_int8_models_refuse_training_float_saving_and_widening(pair, tmp_path):
  _, q8 = pair
  with pytest.raises(tfm.InputError, match="int8 model cannot be trained"), Context(TRAINING=1): q8(SRC, TGT)
  with pytest.raises(tfm.WeightsError, match="an int8 model is saved as int8, not float16"):
    tfm.save(q8, tmp_path / "q.safetensors", dtype="float16")
  assert not (tmp_path / "q.safetensors").exists()
  with pytest.raises(tfm.InputError, match="cannot widen int8"): q8.to_float(dtypes.float16)


def test_an_int8_model_saves_as_int8_and_loads_back_exactly(pair, tmp_path):
  f32, q8 = pair
  path = tmp_path / "q8.safetensors"
  tfm.save(q8, path)
  with safe_open(str(path), framework="numpy") as f:
    assert f.metadata()["tfm.dtype"] == "int8"
    codes = {name: f.get_slice(name).get_dtype() for name in f.keys()}
  assert codes["generator.weight"] == codes["decoder.layers.0.ffn.fc1.weight"] == "I8"
  assert codes["generator.scale"] == codes["src_embed.weight"] == codes["generator.bias"] == "F32"
  again = tfm.load(path, device=DEVICE)
  assert again.quantized
  np.testing.assert_array_equal(again(SRC, TGT).numpy(), q8(SRC, TGT).numpy())
  np.testing.assert_array_equal(weights.copy_to(q8, DEVICE)(SRC, TGT).numpy(), q8(SRC, TGT).numpy())
  # the float model written as int8 (what `tfm convert --dtype int8` does) is the same file's model
  tfm.save(f32, tmp_path / "f.safetensors", dtype="int8")
  np.testing.assert_array_equal(tfm.load(tmp_path / "f.safetensors", device=DEVICE)(SRC, TGT).numpy(), q8(SRC, TGT).numpy())
  tfm.save(f32, tmp_path / "f32.safetensors")
  assert (tmp_path / "f.safetensors").stat().st_size < 0.6 * (tmp_path / "f32.safetensors").stat().st_size
  with pytest.raises(tfm.WeightsError, match="holds int8 weights: load it with dtype='int8'"): tfm.load(path, dtype="float16")
  with pytest.raises(tfm.WeightsError, match="holds int8 weights and the model is float"): weights.load_into(f32, path)
  from tfm.apps import subjects
  with pytest.raises(tfm.TfmError, match="holds int8 weights: compare the float file"): subjects.load_subject(str(path))


def test_an_int8_file_with_rows_out_of_range_is_refused(pair, tmp_path):
  _, q8 = pair
  tfm.save(q8, tmp_path / "q8.safetensors")
  with safe_open(str(tmp_path / "q8.safetensors"), framework="numpy") as f:
    arrays, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
  meta.pop(stored.CHECKSUM)
  wide = {**arrays, "generator.weight": arrays["generator.weight"].astype(np.float32)}   # F32 where I8 belongs
  save_file(wide, str(tmp_path / "wide.safetensors"), metadata=meta)
  with pytest.raises(tfm.WeightsError, match="tensor generator.weight is stored as F32, where int8 files store it as I8"):
    tfm.load(tmp_path / "wide.safetensors", device=DEVICE)
  arrays["generator.weight"][0, 0] = -128   # int8, but outside the symmetric [-127, 127] of quantize_rows
  save_file(arrays, str(tmp_path / "low.safetensors"), metadata=meta)
  with pytest.raises(tfm.WeightsError, match="generator.weight is not int8 rows"): tfm.load(tmp_path / "low.safetensors", device=DEVICE)


def test_int8_is_for_translation_models():
  config = tfm.VisionConfig.preset("vit-tiny")
  with pytest.raises(tfm.WeightsError, match="dtype='int8' is for translation models"):
    weights.build(config, {}, "a ViT", DEVICE, "int8")


def test_tfm_translate_takes_dtype_int8(capsys):
  from tfm.cli import main
  assert main(["translate", "--dtype", "int8", "--device", DEVICE, "3rd of March, 2021"]) in (0, None)
  assert capsys.readouterr().out.strip() == "2021-03-03"


def test_the_int8_benchmark_counts_agreement_over_padded_rows():
  from benchmarks.int8 import _agreement
  a, b = np.array([[5, 6, 2], [7, 8, 2]]), np.array([[5, 6, 2, 0], [7, 9, 9, 2]])
  assert _agreement(a, b, 0) == (5 / 8, 0.5)
  assert _agreement(b, b, 0) == (1.0, 1.0)
