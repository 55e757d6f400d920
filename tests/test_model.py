"""The model against the float64 oracle, and the properties the paper's architecture promises."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import DEVICE, randomize, state_numpy
from reference import Reference
from tinygrad import Context, Tensor

import tfm
from tfm.apps.compare import TOLERANCE
from tfm.nn.layers import sinusoid_table

FLOAT32_TOLERANCE = TOLERANCE["float32"]

# each switch of the config appears at least once, without compiling every combination
VARIANTS = {
  "post-norm relu interleaved tied": dict(),
  "pre-norm gelu half-split": dict(norm_first=True, activation="gelu", positional="half_split"),
  "post-norm swish half-split output-bias": dict(activation="swish", positional="half_split", output_bias=True),
  "pre-norm relu untied no-scale no-final-norm": dict(norm_first=True, tie_embeddings=False, scale_embedding=False,
                                                      final_norm=False, output_bias=True),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_float64_oracle(variant, tiny_config, batch):
  config = tiny_config.replace(**VARIANTS[variant])
  model = randomize(tfm.Transformer(config, device=DEVICE), seed=1)
  src, tgt = batch
  logits = model(src, tgt).numpy()
  expected = Reference(state_numpy(model), config.to_dict()).logits(src, tgt)
  assert logits.shape == (2, tgt.shape[1], config.vocab_size)
  assert np.abs(logits - expected).max() <= FLOAT32_TOLERANCE


def test_encoder_output_matches_oracle(tiny_model, batch):
  src, _ = batch
  memory = tiny_model.encode(src).numpy()
  expected = Reference(state_numpy(tiny_model), tiny_model.config.to_dict()).encode(src)
  assert np.abs(memory - expected).max() <= FLOAT32_TOLERANCE


def test_decoder_is_causal(tiny_model, batch):
  src, tgt = batch
  changed = tgt.copy()
  changed[:, 3] = [50, 51]
  before, after = tiny_model(src, tgt).numpy(), tiny_model(src, changed).numpy()
  np.testing.assert_array_equal(before[:, :3], after[:, :3])
  assert np.abs(before[:, 3:] - after[:, 3:]).max() > 1e-3


def test_padding_a_source_changes_none_of_its_logits(tiny_model, batch):
  src, tgt = batch
  alone = tiny_model(src[:1, :5], tgt[:1]).numpy()  # row 0 without its two pads
  padded = tiny_model(src, tgt).numpy()[:1]
  np.testing.assert_allclose(padded, alone, atol=1e-5)


def test_what_sits_under_source_padding_is_never_read(tiny_model, batch):
  src, tgt = batch
  weight = tiny_model.src_embed.weight
  base, pad_row = tiny_model(src, tgt).numpy(), weight[0].numpy()
  weight[0].assign(Tensor(pad_row + 5.0, device=DEVICE)).realize()
  try:
    moved = tiny_model(src, tgt).numpy()
  finally:
    weight[0].assign(Tensor(pad_row, device=DEVICE)).realize()
  # the pad row is tied to the generator, so the pad token's own logit moves; no other logit may
  np.testing.assert_allclose(moved[..., 1:], base[..., 1:], atol=1e-5)
  assert np.abs(moved[..., 0] - base[..., 0]).max() > 1e-2


def test_dropout_is_off_at_inference(tiny_model, batch):
  src, tgt = batch
  assert tiny_model.config.dropout > 0
  np.testing.assert_array_equal(tiny_model(src, tgt).numpy(), tiny_model(src, tgt).numpy())


def test_dropout_is_on_in_training_and_keeps_the_mean(tiny_model):
  ids = Tensor(np.tile(np.arange(3, 63, dtype=np.int32), (8, 1)), device=DEVICE)  # (8, 60): enough values to average
  plain = tiny_model.embed(tiny_model.src_embed, ids).numpy()
  with Context(TRAINING=1):
    first, second = (tiny_model.embed(tiny_model.src_embed, ids).numpy() for _ in range(2))
  assert not np.array_equal(first, second)
  dropped = np.mean(first == 0)
  assert abs(dropped - tiny_model.config.dropout) < 0.02
  # inverted dropout scales kept values by 1/(1-p): the sum over many elements is preserved in expectation
  assert abs(first.sum() - plain.sum()) / np.abs(plain).sum() < 0.05


def test_sinusoid_table_follows_the_paper():
  table = sinusoid_table(50, 16)
  pos, i = 7, 3
  assert table[pos, 2 * i] == pytest.approx(np.sin(pos / 10000 ** (2 * i / 16)))
  assert table[pos, 2 * i + 1] == pytest.approx(np.cos(pos / 10000 ** (2 * i / 16)))
  half = sinusoid_table(50, 16, "half_split")
  assert half[pos, i] == pytest.approx(table[pos, 2 * i]) and half[pos, 8 + i] == pytest.approx(table[pos, 2 * i + 1])


def test_base_preset_has_the_papers_parameter_count():
  model = tfm.Transformer(tfm.TransformerConfig.preset("base", vocab_size=37000), device=DEVICE)
  assert 63_000_000 <= model.num_parameters() <= 65_000_000  # paper, table 3: 65M


def test_tied_embeddings_share_one_matrix(tiny_model):
  assert tiny_model.src_embed.weight is tiny_model.tgt_embed.weight is tiny_model.generator.weight


@pytest.mark.parametrize("fields, message", [
  (dict(d_model=500, n_heads=8), "d_model=500 is not divisible by n_heads=8"),
  (dict(d_model=33, n_heads=3), "d_model=33 must be even"),
  (dict(activation="tanh"), "activation='tanh' is not supported; choose one of relu, gelu, gelu_tanh, swish"),
  (dict(positional="rotary"), "positional='rotary' is not supported"),
  (dict(norm="batch"), "norm='batch' is not supported; choose one of layer, rms"),
  (dict(d_head=0, n_heads=3), "d_head=0 must be a positive integer"),
  (dict(dropout=1.0), "dropout=1.0 must be in [0, 1)"),
  (dict(vocab_size=0), "vocab_size=0 must be a positive integer"),
  (dict(n_encoder_layers=-1), "n_encoder_layers=-1 must be an integer >= 0"),
  (dict(layer_norm_eps=0.0), "layer_norm_eps=0.0 must be > 0"),
  (dict(pad_id=64), "pad_id=64 is out of range for vocab_size=64"),
  (dict(decoder_start_id=-1), "decoder_start_id=-1 is out of range"),
])
def test_config_validation_names_the_field(fields, message):
  with pytest.raises(tfm.ConfigError) as err:
    tfm.TransformerConfig.preset("tiny", **fields)
  assert message in str(err.value)


def test_unknown_preset_and_field_are_refused():
  with pytest.raises(tfm.ConfigError, match="unknown preset 'huge'; choose one of base, big, tiny"):
    tfm.TransformerConfig.preset("huge")
  with pytest.raises(tfm.ConfigError, match="unknown config field"):
    tfm.TransformerConfig.from_dict({"d_model": 32, "heads": 4})


@pytest.mark.parametrize("ids, message", [
  ([[1, 2, 64]], "token id 64 out of range for vocab_size=64 (ids must be in [0, 63])"),
  ([[1, -3, 2]], "token id -3 out of range"),
  ([[1.0, 2.0]], "must be integer token ids"),
  ([1, 2, 3], "must have shape (batch, length)"),
  (np.zeros((0, 4), dtype=np.int32), "is empty"),
  (np.ones((1, 65), dtype=np.int32), "longer than max_len=64"),
])
def test_bad_token_ids_are_refused_before_touching_the_device(tiny_model, ids, message):
  with pytest.raises(tfm.InputError) as err:
    tiny_model.encode(ids)
  assert message in str(err.value)


def test_mismatched_batches_are_refused(tiny_model, batch):
  src, tgt = batch
  with pytest.raises(tfm.InputError, match="batch size 2 but tgt_ids has 1"):
    tiny_model(src, tgt[:1])


@pytest.mark.parametrize("head_dim", [7, 8])
def test_a_decode_steps_attention_with_padded_values_is_scaled_dot_product_attention(head_dim):
  from tfm.nn.attention import attend_normalised_late, scaled_dot_product_attention, value_width, with_ones
  rng = np.random.default_rng(0)
  q, k, v = (Tensor(rng.standard_normal((2, 3, n, head_dim), dtype=np.float32), device=DEVICE) for n in (1, 5, 5))
  mask = Tensor(np.array([True, True, False, True, False]).reshape(1, 1, 1, 5), device=DEVICE)
  v1 = with_ones(v)
  assert v1.shape[-1] == value_width(head_dim) == (8 if head_dim == 7 else 12)   # hd + 1 rounded up to a multiple of 4
  columns = v1.numpy()
  np.testing.assert_array_equal(columns[..., :head_dim], v.numpy())
  assert (columns[..., head_dim] == 1).all() and (columns[..., head_dim + 1:] == 0).all()
  np.testing.assert_allclose(attend_normalised_late(q, k, v1, mask).numpy(), scaled_dot_product_attention(q, k, v, mask).numpy(),
                             rtol=1e-5, atol=1e-6)
