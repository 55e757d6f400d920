"""The checkpoint families tfm.interop.seq2seq imports (M2M100/NLLB, BART, mBART, Pegasus) compute what transformers
computed for them: the committed tiny random checkpoints (tests/make_family_fixtures.py) give transformers' logits, the
float64 oracle agrees, and generate() gives transformers' greedy and beam ids and scores, forced first tokens and
language start tokens included. Checkpoints that do not fit are refused by name."""
import json
from pathlib import Path

import numpy as np
from tinygrad import dtypes
import pytest

import tfm
from tfm.interop import convert_folder as convert_seq2seq_or_t5
from tfm.interop import convert_seq2seq
from tfm.reference import Reference
from tests.conftest import DEVICE, copied_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
FAMILIES = ["m2m100", "bart", "mbart", "pegasus", "t5", "flan_t5"]
TOLERANCE = 1e-4
FIELDS = ("norm_first", "use_final_norm", "positional", "position_offset", "embed_norm", "output_bias", "activation", "scale_embedding",
          "start_id", "tie_embeddings")
EXPECTED = {"m2m100": (True, True, "m2m100", 2, False, False, "relu", True, 2, True),
            "bart": (False, False, "learned", 2, True, True, "gelu", False, 2, True),
            "mbart": (True, True, "learned", 2, True, True, "gelu", True, 170, True),   # 170: ro_RO
            "pegasus": (True, True, "half_split", 0, False, True, "relu", True, 0, True),
            "t5": (True, True, "relative", 0, False, False, "relu", False, 0, True),
            "flan_t5": (True, True, "relative", 0, False, False, "gelu_tanh", False, 0, False)}
T5_FIELDS = ("norm", "linear_bias", "scale_attention", "gated_ffn", "head_dim", "scale_output", "relative_buckets", "relative_max_distance")
T5_EXPECTED = {"t5": ("rms", False, False, False, 8, True, 8, 20), "flan_t5": ("rms", False, False, True, 6, False, 8, 20)}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
  name = request.param
  model = tfm.from_pretrained(FIXTURES / f"{name}_tiny", device=DEVICE)
  return name, model, dict(np.load(FIXTURES / f"{name}_tiny.npz")), json.loads((FIXTURES / f"{name}_tiny.json").read_text())


def test_each_family_is_read_as_itself(family):
  name, model, _, _ = family
  c = model.config
  assert tuple(getattr(c, f) for f in FIELDS) == EXPECTED[name]
  assert tuple(getattr(c, f) for f in T5_FIELDS) == T5_EXPECTED.get(name, ("layer", True, True, False, 8, False, 32, 128))
  assert (c.d_model, c.n_heads, c.d_ff) == (32, 4, 64)
  assert c.vocab_size == json.loads((FIXTURES / f"{name}_tiny" / "config.json").read_text())["vocab_size"]


def test_logits_and_encoder_output_are_transformers(family):
  _, model, io, _ = family
  src, real = io["src"], (io["src"] != model.config.pad_id)[..., None]
  assert np.abs(model.encode(src).numpy() * real - io["memory"]).max() <= TOLERANCE
  logits = model(src, io["tgt"]).numpy()
  assert np.abs(io["logits"]).max() > 0.5 and np.abs(logits - io["logits"]).max() <= TOLERANCE   # T5 v1.0 scales by d^-0.5


def test_the_float64_oracle_agrees_with_transformers(family):
  name, _, io, _ = family
  conv = convert_seq2seq_or_t5(FIXTURES / f"{name}_tiny")
  oracle = Reference(conv.arrays, conv.config.to_dict())
  assert np.abs(oracle.logits(io["src"], io["tgt"]) - io["logits"]).max() <= TOLERANCE


def test_generate_gives_transformers_ids_and_scores(family):
  _, model, _, expected = family
  eos = model.config.eos_id
  def rows(ids):   # each hypothesis up to its eos (transformers pads finished beams of some families with eos, not pad)
    return [[int(t) for t in row[:list(row).index(eos) + 1 if eos in row else len(row)]] for row in np.asarray(ids)]
  for case in expected["cases"]:
    s = case["settings"]
    saved = model.generation_config
    if "begin_suppress_tokens" in s: model.generation_config = {**saved, "begin_suppress_tokens": s["begin_suppress_tokens"]}
    try:
      ids, scores = tfm.generate(model, np.array(expected["src"]), max_len=expected["max_len"], beam_size=s["num_beams"],
                                 length_penalty=s.get("length_penalty"), num_return=s.get("num_return_sequences"),
                                 return_scores=True)
    finally: model.generation_config = saved
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
  with pytest.raises(tfm.InputError, match="forced_bos_id has token id 155"):
    tfm.generate(model, src, max_len=6, forced_bos_id=155)


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


def test_t5_relative_buckets_are_transformers():
  torch_t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
  import torch
  from tfm.nn.relative import relative_buckets
  distance = np.arange(-300, 301)
  for bidirectional, buckets, far in ((True, 32, 128), (False, 32, 128), (True, 8, 20), (False, 8, 20)):
    theirs = torch_t5.T5Attention._relative_position_bucket(torch.from_numpy(distance), bidirectional, buckets, far).numpy()
    np.testing.assert_array_equal(relative_buckets(distance, bidirectional, buckets, far), theirs)


def test_t5_checkpoints_that_do_not_fit_are_refused(tmp_path):
  with pytest.raises(tfm.WeightsError, match="feed_forward_proj='gated-gelu-x'"):
    convert_seq2seq_or_t5(copied_checkpoint(FIXTURES / "t5_tiny", tmp_path / "a", None, lambda hf: hf.update({"feed_forward_proj": "gated-gelu-x"})))
  with pytest.raises(tfm.WeightsError, match="no lm_head.weight, but config.json unties it"):
    convert_seq2seq_or_t5(copied_checkpoint(FIXTURES / "t5_tiny", tmp_path / "b", None, lambda hf: hf.update({"tie_word_embeddings": False})))
  with pytest.raises(tfm.WeightsError, match="missing tensor.*decoder.layers.1.ffn.gate.weight"):
    convert_seq2seq_or_t5(copied_checkpoint(FIXTURES / "flan_t5_tiny", tmp_path / "c",
                                            lambda a: a.pop("decoder.block.1.layer.2.DenseReluDense.wi_1.weight"), None))


def test_a_family_saved_and_loaded_as_tfm_keeps_its_function(family, tmp_path):
  _, model, io, _ = family
  tfm.save(model, tmp_path / "model.safetensors")
  again = tfm.load(tmp_path / "model.safetensors", device=DEVICE)
  assert again.config == model.config
  np.testing.assert_allclose(again(io["src"], io["tgt"]).numpy(), io["logits"], atol=TOLERANCE)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_folder_translates_as_transformers_does(name):
  expected = json.loads((FIXTURES / f"{name}_tiny.json").read_text())["translations"]
  translator = tfm.Translator.load(FIXTURES / f"{name}_tiny", device=DEVICE, source_lang=expected["source_lang"],
                                   target_lang=expected["target_lang"])
  assert translator.tokenizer.encode(expected["texts"]) == [[t for t in row if t != translator.model.config.pad_id]
                                                           for row in expected["ids"]]
  assert translator.translate(expected["texts"], beam_size=1, max_len=15) == expected["expected"]


def test_languages_are_chosen_per_call_and_a_missing_one_is_named():
  translator = tfm.Translator.load(FIXTURES / "m2m100_tiny", device=DEVICE)
  assert translator.languages == ["eng_Latn", "fra_Latn", "deu_Latn"]
  with pytest.raises(tfm.InputError, match="no source language: pass source_lang=..., one of eng_Latn, fra_Latn, deu_Latn"):
    translator.translate(["the cat"])
  with pytest.raises(tfm.InputError, match="no target language: pass target_lang=..., one of eng_Latn"):
    translator.translate(["the cat"], source_lang="eng_Latn")
  with pytest.raises(tfm.InputError, match="unknown target language 'xx_Yyyy'"):
    translator.translate(["the cat"], source_lang="eng_Latn", target_lang="xx_Yyyy")
  texts = ["the cat sat on the mat"]
  to_german = translator.translate(texts, source_lang="eng_Latn", target_lang="deu_Latn", max_len=15)
  expected = json.loads((FIXTURES / "m2m100_tiny.json").read_text())["translations"]["expected"][:1]
  assert to_german == expected and translator.tokenizer.target_lang is None   # put back after the call
  ids = tfm.generate(translator.model, translator.tokenizer.encode(texts, source_lang="eng_Latn"), max_len=4,
                     forced_bos_id=translator.tokenizer.language_id("fra_Latn"))
  assert ids[0, 0] == translator.tokenizer.language_id("fra_Latn")
  with pytest.raises(tfm.InputError, match="has no languages to choose"):
    tfm.Translator.load(FIXTURES / "t5_tiny", device=DEVICE).translate(["a"], target_lang="de")


def test_the_command_line_translates_a_folder_between_languages(capsys):
  from tfm import cli
  expected = json.loads((FIXTURES / "m2m100_tiny.json").read_text())["translations"]
  argv = ["translate", "--model", str(FIXTURES / "m2m100_tiny"), "--device", DEVICE, "--max-len", "15", "--source-lang", "eng_Latn",
          "--target-lang", "deu_Latn", *expected["texts"][:2]]
  assert cli.main(argv) == 0
  assert capsys.readouterr().out.splitlines() == expected["expected"][:2]
  assert cli.main(argv[:-4] + expected["texts"][:1]) == 2
  assert "no target language: pass target_lang=..., one of eng_Latn, fra_Latn, deu_Latn" in capsys.readouterr().err


def test_t5_splits_over_two_devices_with_its_gated_ffn_by_columns():
  io = dict(np.load(FIXTURES / "flan_t5_tiny.npz"))
  model = tfm.from_pretrained(FIXTURES / "flan_t5_tiny", device="CPU*2", parallel="tensor")
  assert model.decoder.layers[1].ffn.gate.weight.uop.axis == 0   # split by output features, as fc1
  assert np.abs(model(io["src"], io["tgt"]).numpy() - io["logits"]).max() <= TOLERANCE


def test_an_import_reads_the_layers_tensors_only_as_the_model_takes_them():
  from tfm.io import stored
  conv = convert_seq2seq_or_t5(FIXTURES / "bart_tiny")
  lazy = [m for m in conv.arrays.maps if isinstance(m, stored.Renamed)]
  assert lazy and "encoder.layers.0.ffn.fc1.weight" in lazy[0] and "src_embed.weight" not in lazy[0]
  assert conv.arrays["encoder.layers.0.ffn.fc1.weight"].shape == (64, 32)   # read from the file when asked for


@pytest.mark.parametrize("name", ["bart", "flan_t5"])
def test_int8_families_compute_their_dequantized_weights_and_save_as_int8(name, tmp_path):
  from tfm.io import weights
  io, conv = dict(np.load(FIXTURES / f"{name}_tiny.npz")), convert_seq2seq_or_t5(FIXTURES / f"{name}_tiny")
  model = tfm.from_pretrained(FIXTURES / f"{name}_tiny", device=DEVICE, dtype="int8")
  assert model.quantized and all(layer.weight.dtype == dtypes.int8 for layer in (model.encoder.layers[0].ffn.fc1, model.generator))
  twin = weights.build(*weights.int8_twin(conv.config, dict(conv.arrays)), "the dequantized weights", DEVICE)   # what tfm compare checks
  logits = model(io["src"], io["tgt"]).numpy()
  assert np.abs(logits - twin(io["src"], io["tgt"]).numpy()).max() <= TOLERANCE
  tfm.save(model, tmp_path / "int8.safetensors")
  np.testing.assert_allclose(tfm.load(tmp_path / "int8.safetensors", device=DEVICE)(io["src"], io["tgt"]).numpy(), logits, atol=TOLERANCE)


def test_whisper_computes_transformers_encoder_output_and_logits():
  io = dict(np.load(FIXTURES / "whisper_tiny.npz"))
  model = tfm.from_pretrained(FIXTURES / "whisper_tiny", device=DEVICE)
  c = model.config
  assert (c.n_mels, c.max_source_len, c.max_len, c.positional, c.position_offset, c.norm_first, c.start_id) == (8, 16, 24, "learned", 0, True, 1)
  assert np.abs(model.encode(io["src"]).numpy() - io["memory"]).max() <= TOLERANCE
  assert np.abs(model(io["src"], io["tgt"]).numpy() - io["logits"]).max() <= TOLERANCE
  conv = convert_seq2seq_or_t5(FIXTURES / "whisper_tiny")
  assert np.abs(Reference(dict(conv.arrays), c.to_dict()).logits(io["src"], io["tgt"]) - io["logits"]).max() <= TOLERANCE
  assert not conv.arrays["encoder.layers.0.self_attn.k_proj.bias"].any()   # Whisper's keys have no bias: zeros
  with pytest.raises(tfm.InputError, match=r"log-mel features of shape \(batch, 8, 32\), floats; got dtype float32, shape \(2, 8, 31\)"):
    model.encode(io["src"][:, :, :31])



def test_whisper_decodes_audio_as_the_oracle_does_with_the_first_tokens_it_suppresses():
  from tfm.apps import oracle_decode
  io = dict(np.load(FIXTURES / "whisper_tiny.npz"))
  model = tfm.from_pretrained(FIXTURES / "whisper_tiny", device=DEVICE)
  conv = convert_seq2seq_or_t5(FIXTURES / "whisper_tiny")
  oracle = Reference(dict(conv.arrays), model.config.to_dict())
  suppressed = model.generation_config["begin_suppress_tokens"]
  ids = tfm.generate(model, io["src"], max_len=8)
  assert not set(ids[:, 0]) & set(suppressed) and ids[0, 0] != 51
  model.generation_config = {k: v for k, v in model.generation_config.items() if k != "begin_suppress_tokens"}
  free = tfm.generate(model, io["src"], max_len=8)
  assert free[0, 0] == 51   # what the suppression changed
  np.testing.assert_array_equal(free, oracle_decode.greedy(oracle, model.config, io["src"], 8)[0][:, :free.shape[1]])
  beams = tfm.generate(model, io["src"], max_len=8, beam_size=3)
  best = [oracle_decode.beam_search(oracle_decode.next_token_logprobs(oracle, row), 1, 2, 3, 8)[0][0] for row in io["src"]]
  assert [[t for t in row if t != model.config.pad_id] for row in beams.tolist()] == best


def test_whisper_front_end_as_products_equals_the_convolutions_it_replaces():
  # at 160 channels and 64 output frames the second convolution is tfm's GEMM on CPU (the fixture's is too small for it)
  from tinygrad import Tensor
  from tfm.nn.audio import ConvFrontEnd
  from tfm.runtime.gemm import gemm_fits
  config = tfm.TransformerConfig(vocab_size=16, d_model=160, n_heads=2, d_ff=32, n_encoder_layers=1, n_decoder_layers=1,
                                 n_mels=8, max_source_len=64, max_len=8)
  front = ConvFrontEnd(config)
  rng = np.random.default_rng(0)
  for conv in (front.conv1, front.conv2):
    for p in (conv.weight, conv.bias): p.replace(Tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.1, device=DEVICE))
  x = Tensor(rng.standard_normal((2, 8, 128)).astype(np.float32), device=DEVICE)
  assert gemm_fits(Tensor.empty(2 * 64, 160 * 3, device=DEVICE), front.conv2.weight.reshape(160, -1)) == (DEVICE == "CPU")
  want = front.conv2(front.conv1(x).gelu(approximate="none")).gelu(approximate="none")   # tinygrad's conv1d
  np.testing.assert_allclose(front(x).numpy(), want.permute(0, 2, 1).numpy(), rtol=0, atol=1e-5)


def test_a_checkpoint_with_nan_values_is_refused_before_anything_is_used(tmp_path):
  def poisoned(a): a["model.decoder.layers.1.fc2.weight"] = np.full_like(a["model.decoder.layers.1.fc2.weight"], np.nan)
  with pytest.raises(tfm.WeightsError, match=r"decoder.layers.1.ffn.fc2.weight has 2048 NaN/Inf values"):
    tfm.from_pretrained(bart_copy(tmp_path, poisoned), device=DEVICE)
