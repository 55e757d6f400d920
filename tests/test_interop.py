"""Importers against the frameworks they read: torch.nn.Transformer state dicts and Marian (opus-mt) checkpoints.

The fixtures (tests/make_fixtures.py) hold outputs PyTorch and transformers computed for randomly initialised models
whose every bias, LayerNorm gain and bias, final_logits_bias and pad row is non-trivial; tfm must match them to 1e-4.
Where torch / transformers are installed the same comparisons also run live.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DEVICE, copied_checkpoint
from safetensors import safe_open

import tfm
from tfm.cli import main
from tfm.interop import convert_seq2seq as convert_marian, convert_torch_transformer, load_stacks, load_torch_transformer
from tfm.nn.layers import sinusoid_table
from tfm.reference import Reference

FIXTURES = Path(__file__).parent / "fixtures"
MARIAN = FIXTURES / "marian_tiny"
TOLERANCE = 1e-4
TORCH_VARIANTS = ["post_norm_relu", "pre_norm_gelu"]


def torch_fixture(variant: str) -> tuple[Path, dict, dict[str, np.ndarray]]:
  """(state dict file, nn.Transformer constructor kwargs, inputs and expected outputs)."""
  path = FIXTURES / f"torch_{variant}.safetensors"
  with safe_open(path, framework="numpy") as f: kwargs = json.loads(f.metadata()["kwargs"])
  return path, kwargs, dict(np.load(FIXTURES / f"torch_{variant}.npz"))


def import_args(kwargs: dict) -> dict:
  return dict(nhead=kwargs["nhead"], norm_first=kwargs["norm_first"], activation=kwargs["activation"],
              layer_norm_eps=kwargs.get("layer_norm_eps", 1e-5))


@pytest.fixture(scope="module")
def stacks() -> dict:
  """Each torch fixture imported once: variant -> (TorchTransformer, inputs and expected outputs)."""
  out = {}
  for variant in TORCH_VARIANTS:
    path, kwargs, io = torch_fixture(variant)
    out[variant] = load_torch_transformer(path, **import_args(kwargs), device=DEVICE), io
  return out


# --- torch.nn.Transformer -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", TORCH_VARIANTS)
def test_torch_encoder_matches_pytorch(stacks, variant):
  model, io = stacks[variant]
  memory = model.encoder(io["src"], src_key_padding_mask=io["src_key_padding_mask"]).numpy()
  assert np.abs(memory - io["memory"]).max() <= TOLERANCE


@pytest.mark.parametrize("variant", TORCH_VARIANTS)
def test_torch_decoder_matches_pytorch(stacks, variant):
  model, io = stacks[variant]
  out = model.decoder(io["tgt"], io["memory"], tgt_mask=io["tgt_mask"], memory_key_padding_mask=io["src_key_padding_mask"])
  assert np.abs(out.numpy() - io["output"]).max() <= TOLERANCE


def test_bool_and_float_masks_mean_the_same(stacks):
  model, io = stacks["post_norm_relu"]
  t = io["tgt"].shape[1]
  future = np.triu(np.ones((t, t), dtype=bool), k=1)  # True = masked, as PyTorch's bool masks
  pad_as_float = np.where(io["src_key_padding_mask"], -np.inf, 0.0).astype(np.float32)
  out = model.decoder(io["tgt"], io["memory"], tgt_mask=future, memory_key_padding_mask=pad_as_float).numpy()
  assert np.abs(out - io["output"]).max() <= TOLERANCE


def test_call_runs_encoder_then_decoder(stacks):
  model, io = stacks["post_norm_relu"]
  pad = io["src_key_padding_mask"]
  out = model(io["src"], io["tgt"], tgt_mask=io["tgt_mask"], src_key_padding_mask=pad, memory_key_padding_mask=pad).numpy()
  assert np.abs(out - io["output"]).max() <= TOLERANCE


def test_masks_and_inputs_of_the_wrong_shape_are_input_errors(stacks):
  model, io = stacks["post_norm_relu"]
  with pytest.raises(tfm.InputError, match=r"src_key_padding_mask has shape \(7,\)"):
    model.encoder(io["src"], src_key_padding_mask=io["src_key_padding_mask"][0])
  with pytest.raises(tfm.InputError, match=r"tgt_mask has shape \(4, 4\); expected one of \(5, 5\), \(8, 5, 5\)"):
    model.decoder(io["tgt"], io["memory"], tgt_mask=np.zeros((4, 4), np.float32))
  with pytest.raises(tfm.InputError, match=r"src must be embedded inputs of shape \(batch, length, 32\)"):
    model.encoder(io["src"][0])


def fixture_state(drop: str | None = None) -> dict[str, np.ndarray]:
  """The post-norm fixture's state dict, without the tensor named drop."""
  path, _, _ = torch_fixture("post_norm_relu")
  with safe_open(path, framework="numpy") as f: return {k: f.get_tensor(k) for k in f.keys() if k != drop}


def test_state_dict_missing_a_tensor_is_refused():
  with pytest.raises(tfm.WeightsError, match="missing tensor.*decoder.layers.1.multihead_attn.in_proj_bias"):
    convert_torch_transformer(fixture_state(drop="decoder.layers.1.multihead_attn.in_proj_bias"), nhead=4)


def test_state_dict_of_a_larger_model_says_how_to_strip_the_prefix():
  prefixed = {f"transformer.{k}": v for k, v in fixture_state().items()}
  with pytest.raises(tfm.WeightsError, match="strip its prefix"):
    convert_torch_transformer(prefixed, nhead=4)


def test_state_dict_with_an_extra_tensor_is_refused():
  state = {**fixture_state(), "encoder.layers.0.extra.weight": np.zeros(3, np.float32)}
  with pytest.raises(tfm.WeightsError, match="unexpected tensor.*encoder.layers.0.extra.weight"):
    convert_torch_transformer(state, nhead=4)


def test_nhead_that_does_not_divide_d_model_is_a_config_error():
  with pytest.raises(tfm.ConfigError, match="not divisible by n_heads=5"):
    convert_torch_transformer(fixture_state(), nhead=5)


def test_convert_cli_writes_stacks_that_load_stacks_reads(stacks, tmp_path, capsys):
  path, kwargs, io = torch_fixture("post_norm_relu")
  out = tmp_path / "stacks.safetensors"
  assert main(["convert", str(path), "--nhead", "4", "--out", str(out)]) == 0
  summary = capsys.readouterr().out
  assert "encoder.layers.N.self_attn.in_proj_{weight,bias}" in summary and "(split in 3)" in summary
  assert "mapped 64 source tensors to 88 tfm tensors" in summary
  reloaded = load_stacks(out, device=DEVICE)
  pad = io["src_key_padding_mask"]
  np.testing.assert_array_equal(reloaded.encoder(io["src"], src_key_padding_mask=pad).numpy(),
                                stacks["post_norm_relu"][0].encoder(io["src"], src_key_padding_mask=pad).numpy())
  with pytest.raises(tfm.WeightsError, match="load_stacks"): tfm.load(out)


def test_convert_cli_needs_nhead_for_a_state_dict(tmp_path, capsys):
  path, _, _ = torch_fixture("post_norm_relu")
  assert main(["convert", str(path), "--out", str(tmp_path / "x.safetensors")]) == 2
  assert "--nhead" in capsys.readouterr().err
  assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("variant", TORCH_VARIANTS)
def test_live_pytorch_agrees(stacks, variant, tmp_path):
  torch = pytest.importorskip("torch", reason="PyTorch not installed: compared against the stored fixture outputs only")
  from safetensors.torch import load_file
  path, kwargs, io = torch_fixture(variant)
  reference = torch.nn.Transformer(**kwargs, dropout=0.0, batch_first=True)
  reference.load_state_dict(load_file(path))
  src, tgt = torch.from_numpy(io["src"]), torch.from_numpy(io["tgt"])
  pad, causal = torch.from_numpy(io["src_key_padding_mask"]), torch.from_numpy(io["tgt_mask"])
  expected = reference(src, tgt, tgt_mask=causal, src_key_padding_mask=pad, memory_key_padding_mask=pad).detach().numpy()
  pt_file = tmp_path / "model.pt"
  torch.save(reference.state_dict(), pt_file)
  model = load_torch_transformer(pt_file, **import_args(kwargs), device=DEVICE)
  # torch tensors go straight in, masks included
  out = model(src, tgt, tgt_mask=causal, src_key_padding_mask=pad, memory_key_padding_mask=pad).numpy()
  assert np.abs(out - expected).max() <= TOLERANCE


# --- Marian (opus-mt) ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def marian() -> tuple[tfm.Transformer, dict[str, np.ndarray]]:
  return tfm.from_pretrained(MARIAN, device=DEVICE), dict(np.load(FIXTURES / "marian_tiny.npz"))


def test_marian_encoder_matches_transformers(marian):
  model, io = marian
  assert np.abs(model.encode(io["src"]).numpy() - io["memory"]).max() <= TOLERANCE


def test_marian_logits_match_transformers(marian):
  model, io = marian
  logits = model(io["src"], io["tgt"]).numpy()
  assert np.abs(io["logits"]).max() > 1.0  # the comparison means something only if the logits are not all tiny
  assert np.abs(logits - io["logits"]).max() <= TOLERANCE


def test_the_float64_oracle_agrees_with_transformers_marian():
  # tfm/reference.py, the oracle every backend is checked against, computes what Hugging Face's MarianMTModel computed
  # for the fixture (tests/make_fixtures.py): encoder output and logits, from the converted weights in float64
  io, conv = dict(np.load(FIXTURES / "marian_tiny.npz")), convert_marian(MARIAN)
  oracle = Reference({k: v.astype(np.float64) for k, v in conv.arrays.items()}, conv.config.to_dict())
  assert np.abs(oracle.encode(io["src"]) - io["memory"]).max() <= TOLERANCE
  assert np.abs(io["logits"]).max() > 1.0 and np.abs(oracle.logits(io["src"], io["tgt"]) - io["logits"]).max() <= TOLERANCE


def test_marian_config_is_read_as_marian(marian):
  c = marian[0].config
  assert (c.positional, c.norm_first, c.use_final_norm, c.activation, c.scale_embedding) == ("half_split", False, False, "swish", True)
  assert c.tie_embeddings and c.output_bias and c.layer_norm_eps == 1e-5
  assert (c.pad_id, c.eos_id, c.start_id) == (63, 0, 63)


def test_marian_decoding_defaults_come_from_generation_config_json(marian):
  expected = json.loads((MARIAN / "generation_config.json").read_text())
  assert marian[0].generation_config == expected and expected["forced_eos_token_id"] == 0


def test_marian_folder_without_generation_config_json_takes_them_from_config_json(tmp_path):
  folder = marian_copy(tmp_path, config_change=lambda hf: hf.update({"num_beams": 4, "bad_words_ids": [[63]]}))
  (folder / "generation_config.json").unlink()
  generation = convert_marian(folder).generation_config
  assert generation["num_beams"] == 4 and generation["bad_words_ids"] == [[63]] and generation["decoder_start_token_id"] == 63


def marian_copy(tmp_path: Path, change=None, config_change=None) -> Path:
  """The Marian fixture folder copied, with its tensors passed through change(arrays) and config.json through config_change."""
  return copied_checkpoint(MARIAN, tmp_path / "marian", change, config_change)


def test_marian_file_with_every_tied_name_and_the_position_tables_imports_the_same(tmp_path):
  def old_layout(a):  # what older exports hold: each tied name stored, and the sinusoid tables
    for name in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"):
      a[name] = a["model.shared.weight"].copy()
    for name in ("model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight"):
      a[name] = sinusoid_table(64, 32, "half_split").astype(np.float32)
  expected, got = convert_marian(MARIAN), convert_marian(marian_copy(tmp_path, old_layout))
  assert got.arrays.keys() == expected.arrays.keys()
  for name in expected.arrays: np.testing.assert_array_equal(got.arrays[name], expected.arrays[name], err_msg=name)
  assert sum("checked equal to tfm's half_split sinusoid table" in note for note in got.notes) == 2


def test_marian_with_an_untied_output_layer_keeps_it_separate(tmp_path):
  lm_head = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
  folder = marian_copy(tmp_path, lambda a: a.update({"lm_head.weight": lm_head}),
                       lambda hf: hf.update({"tie_word_embeddings": False}))
  conv = convert_marian(folder)
  assert not conv.config.tie_embeddings
  np.testing.assert_array_equal(conv.arrays["generator.weight"], lm_head)
  np.testing.assert_array_equal(conv.arrays["tgt_embed.weight"], conv.arrays["src_embed.weight"])


@pytest.mark.parametrize("change, config_change, message", [
  (lambda a: a.update({"model.encoder.embed_positions.weight": np.zeros((64, 32), np.float32)}), None,
   "model.encoder.embed_positions.weight is not the half_split sinusoid table"),
  (lambda a: a.update({"lm_head.weight": a["model.shared.weight"] + 1}), None, "lm_head.weight differs from model.shared.weight"),
  (lambda a: a.update({"model.encoder.layernorm_embedding.weight": np.ones(32, np.float32)}), None,
   "unexpected tensor.*model.encoder.layernorm_embedding.weight"),
  (lambda a: a.pop("model.decoder.layers.1.encoder_attn.k_proj.bias"), None, "missing tensor.*model.decoder.layers.1.encoder_attn.k_proj.bias"),
  (lambda a: a.update({"final_logits_bias": a["final_logits_bias"][0]}), None, r"final_logits_bias has shape \(64,\)"),
  (None, lambda hf: hf.update({"activation_function": "gelu_new"}), "activation_function='gelu_new'"),
  (None, lambda hf: hf.update({"model_type": "prophetnet"}), "describes a 'prophetnet' model"),
  (None, lambda hf: hf.update({"decoder_ffn_dim": 128}), "encoder_ffn_dim=64 but decoder_ffn_dim=128"),
], ids=["positions", "tie-broken", "unexpected", "missing", "bias-shape", "activation", "model-type", "ffn-sizes"])
def test_marian_checkpoint_that_does_not_fit_is_refused(tmp_path, change, config_change, message):
  with pytest.raises(tfm.WeightsError, match=message):
    convert_marian(marian_copy(tmp_path, change, config_change))


def test_marian_pickle_checkpoint_is_refused_with_the_conversion_snippet(tmp_path):
  folder = marian_copy(tmp_path)
  (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
  with pytest.raises(tfm.WeightsError, match=r"(?s)pytorch_model.bin.*save_pretrained\(.*safe_serialization=True\)"):
    tfm.from_pretrained(folder)


def test_marian_path_that_is_not_a_folder_is_refused(tmp_path):
  with pytest.raises(tfm.WeightsError, match="not a directory"): tfm.from_pretrained(MARIAN / "model.safetensors")
  with pytest.raises(tfm.WeightsError, match="no config.json"): tfm.from_pretrained(tmp_path)


def test_convert_cli_marian_then_load_gives_the_same_logits(marian, tmp_path, capsys):
  out = tmp_path / "en-de.safetensors"
  assert main(["convert", str(MARIAN), "--out", str(out)]) == 0
  summary = capsys.readouterr().out
  assert "final_logits_bias" in summary and "model.encoder.layers.N.fc1.{weight,bias}" in summary
  model, io = marian
  loaded = tfm.load(out, device=DEVICE)
  np.testing.assert_array_equal(loaded(io["src"], io["tgt"]).numpy(), model(io["src"], io["tgt"]).numpy())
  assert loaded.generation_config == model.generation_config


def test_convert_cli_to_int8_gives_the_int8_model_of_the_checkpoint(marian, tmp_path, capsys):
  out = tmp_path / "en-de.int8.safetensors"
  assert main(["convert", str(MARIAN), "--dtype", "int8", "--out", str(out)]) == 0
  _, io = marian
  loaded, direct = tfm.load(out, device=DEVICE), tfm.from_pretrained(MARIAN, device=DEVICE, dtype="int8")
  assert loaded.quantized and "(int8," in capsys.readouterr().out
  np.testing.assert_array_equal(loaded(io["src"], io["tgt"]).numpy(), direct(io["src"], io["tgt"]).numpy())


def test_live_transformers_agrees(marian):
  torch = pytest.importorskip("torch", reason="PyTorch not installed: compared against the stored fixture outputs only")
  pytest.importorskip("transformers", reason="transformers not installed: compared against the stored fixture outputs only")
  from transformers import MarianMTModel
  model, io = marian
  reference = MarianMTModel.from_pretrained(MARIAN, attn_implementation="eager").eval()
  src, tgt = torch.from_numpy(io["src"]), torch.from_numpy(io["tgt"])
  with torch.no_grad():
    expected = reference(input_ids=src, attention_mask=src != 63, decoder_input_ids=tgt).logits.numpy()
  assert np.abs(model(io["src"], io["tgt"]).numpy() - expected).max() <= TOLERANCE


def test_live_half_split_table_is_marians():
  pytest.importorskip("torch", reason="PyTorch not installed: the table is checked through the fixture logits only")
  pytest.importorskip("transformers", reason="transformers not installed: the table is checked through the fixture logits only")
  from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding
  marian_table = MarianSinusoidalPositionalEmbedding(128, 64).create_weight().numpy()
  assert np.abs(sinusoid_table(128, 64, "half_split") - marian_table).max() <= 1e-6
