"""The checkpoint families tfm.interop.seq2seq imports (M2M100/NLLB, BART, mBART, Pegasus) compute what transformers
computed for them: the committed tiny random checkpoints (tests/make_family_fixtures.py) give transformers' logits, the
float64 oracle agrees, and generate() gives transformers' greedy and beam ids and scores, forced first tokens and
language start tokens included. Checkpoints that do not fit are refused by name."""
import json
from pathlib import Path

import numpy as np
import pytest

import tfm
from tfm.interop import convert_seq2seq
from tfm.reference import Reference
from tests.conftest import DEVICE, copied_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
FAMILIES = ["m2m100", "bart", "mbart", "pegasus"]
TOLERANCE = 1e-4
# (norm_first, final norms, positional, position_offset, embed_norm, output_bias, activation, scale_embedding, start id)
EXPECTED = {"m2m100": (True, True, "m2m100", 2, False, False, "relu", True, 2),
            "bart": (False, False, "learned", 2, True, True, "gelu", False, 2),
            "mbart": (True, True, "learned", 2, True, True, "gelu", True, 61),
            "pegasus": (True, True, "half_split", 0, False, True, "relu", True, 0)}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
  name = request.param
  model = tfm.from_pretrained(FIXTURES / f"{name}_tiny", device=DEVICE)
  return name, model, dict(np.load(FIXTURES / f"{name}_tiny.npz")), json.loads((FIXTURES / f"{name}_tiny.json").read_text())


def test_each_family_is_read_as_itself(family):
  name, model, _, _ = family
  c = model.config
  assert (c.norm_first, c.use_final_norm, c.positional, c.position_offset, c.embed_norm, c.output_bias, c.activation,
          c.scale_embedding, c.start_id) == EXPECTED[name]
  assert c.tie_embeddings and (c.d_model, c.n_heads, c.d_ff, c.vocab_size) == (32, 4, 64, 64)


def test_logits_and_encoder_output_are_transformers(family):
  _, model, io, _ = family
  src, real = io["src"], (io["src"] != model.config.pad_id)[..., None]
  assert np.abs(model.encode(src).numpy() * real - io["memory"]).max() <= TOLERANCE
  logits = model(src, io["tgt"]).numpy()
  assert np.abs(io["logits"]).max() > 1.0 and np.abs(logits - io["logits"]).max() <= TOLERANCE


def test_the_float64_oracle_agrees_with_transformers(family):
  name, _, io, _ = family
  conv = convert_seq2seq(FIXTURES / f"{name}_tiny")
  oracle = Reference(conv.arrays, conv.config.to_dict())
  assert np.abs(oracle.logits(io["src"], io["tgt"]) - io["logits"]).max() <= TOLERANCE


def test_generate_gives_transformers_ids_and_scores(family):
  _, model, _, expected = family
  eos = model.config.eos_id
  def rows(ids):   # each hypothesis up to its eos (transformers pads finished beams of some families with eos, not pad)
    return [[int(t) for t in row[:list(row).index(eos) + 1 if eos in row else len(row)]] for row in np.asarray(ids)]
  for case in expected["cases"]:
    s = case["settings"]
    ids, scores = tfm.generate(model, np.array(expected["src"]), max_len=expected["max_len"], beam_size=s["num_beams"],
                               length_penalty=s.get("length_penalty"), num_return=s.get("num_return_sequences"),
                               return_scores=True)
    assert rows(ids) == rows(case["ids"]), s
    if "scores" in case: np.testing.assert_allclose(scores, case["scores"], atol=1e-4)
  forced = expected["generation"].get("forced_bos_token_id")
  if forced is not None: assert all(row[0] == forced for case in expected["cases"] for row in case["ids"])


def test_a_forced_first_token_given_to_generate_wins_over_the_checkpoints():
  model = tfm.from_pretrained(FIXTURES / "m2m100_tiny", device=DEVICE)
  src = np.array(json.loads((FIXTURES / "m2m100_tiny.json").read_text())["src"])
  for beam in (1, 3):
    ids, scores = tfm.generate(model, src, max_len=6, beam_size=beam, forced_bos_id=41, return_scores=True)
    assert (ids[:, 0] == 41).all() and np.isfinite(scores).all()
  with pytest.raises(tfm.InputError, match="forced_bos_id has token id 64"):
    tfm.generate(model, src, max_len=6, forced_bos_id=64)


def bart_copy(tmp_path, change=None, config_change=None) -> Path:
  return copied_checkpoint(FIXTURES / "bart_tiny", tmp_path / "bart", change, config_change)


@pytest.mark.parametrize("change, config_change, message", [
  (lambda a: a.pop("model.encoder.layernorm_embedding.bias"), None, "missing tensor.*model.encoder.layernorm_embedding.bias"),
  (lambda a: a.update({"model.decoder.embed_positions.weight": a["model.decoder.embed_positions.weight"][:-1]}), None,
   r"model.decoder.embed_positions.weight.*\(65, 32\)"),
  (lambda a: a.update({"model.encoder.layer_norm.weight": np.ones(32, np.float32)}), None, "unexpected tensor.*model.encoder.layer_norm.weight"),
  (None, lambda hf: hf.update({"model_type": "nllb-moe"}), "describes a 'nllb-moe' model.*m2m_100"),
  (None, lambda hf: hf.update({"decoder_attention_heads": 2}), "encoder_attention_heads=4 but decoder_attention_heads=2"),
], ids=["embed-norm-missing", "positions-shape", "unexpected-final-norm", "model-type", "heads"])
def test_a_checkpoint_that_does_not_fit_is_refused(tmp_path, change, config_change, message):
  with pytest.raises(tfm.WeightsError, match=message):
    convert_seq2seq(bart_copy(tmp_path, change, config_change))


def test_a_family_saved_and_loaded_as_tfm_keeps_its_function(family, tmp_path):
  _, model, io, _ = family
  tfm.save(model, tmp_path / "model.safetensors")
  again = tfm.load(tmp_path / "model.safetensors", device=DEVICE)
  assert again.config == model.config
  np.testing.assert_allclose(again(io["src"], io["tgt"]).numpy(), io["logits"], atol=TOLERANCE)
