"""Generation: the KV-cache step against the full forward pass, greedy and beam search against an independent numpy
reference, batching, the generation rules and settings, and the Translator."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DEVICE, randomize
from tinygrad import Tensor, TinyJit

import tfm
from tfm.apps import translator as translator_module
from tfm.apps.oracle_decode import beam_search as reference_beam_search
from tfm.cli import main
from tfm.generation.ranking import best_continuations
from tfm.io.tokenizer import CharTokenizer

from tfm import generation as gen
from tfm.nn import linear
ROWS, T_MAX = 4, 16  # the reference's forward passes always have this shape, so they compile once
SRC = np.array([[5, 9, 12, 33, 41, 7, 8, 19, 3], [7, 8, 9, 10, 11, 0, 0, 0, 0], [60, 61, 62, 0, 0, 0, 0, 0, 0]], np.int32)


@pytest.fixture(scope="module")
def model() -> tfm.Transformer:
  """Tiny, random non-trivial weights; the output bias raises eos, so that hypotheses end at different lengths, and
  rules out pad, so that trailing pads are padding (as Marian checkpoints rule pad out)."""
  m = randomize(tfm.Transformer(tfm.TransformerConfig.preset("tiny", output_bias=True), device=DEVICE), seed=3)
  bias = m.generator.bias.numpy()
  bias[m.config.eos_id] += 1.5
  bias[m.config.pad_id] = -30.0
  m.generator.bias.replace(Tensor(bias, device=m.device).realize())
  return m


@pytest.fixture(scope="module")
def full(model):
  """Log-probs (n, T_MAX, V) from the full, uncached forward pass of up to ROWS sources and targets (the oracle the
  cache is checked against), padded to one shape and captured once with TinyJit, so each call costs milliseconds."""
  def forward(src: Tensor, tgt: Tensor) -> Tensor:
    with model.on_device(): return model.run_decoder(tgt, model.run_encoder(src), model.padding_mask(src)).log_softmax(-1).realize()
  jitted = TinyJit(forward)
  def logprobs(src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    padded_src = np.full((ROWS, SRC.shape[1]), model.config.pad_id, np.int32)
    padded_src[:len(src), :src.shape[1]] = src
    padded_src[len(src):, 0] = 3  # unused rows need one real token, or their attention has nothing to attend to
    padded_tgt = np.full((ROWS, T_MAX), model.config.pad_id, np.int32)
    padded_tgt[:len(tgt), :tgt.shape[1]] = tgt
    return jitted(Tensor(padded_src, device=model.device), Tensor(padded_tgt, device=model.device)).numpy()[:len(tgt)]
  return logprobs


def next_token_logprobs(full, src_row: np.ndarray):
  """The numpy reference's oracle: prefixes (start token first) of one source -> next-token log-probs."""
  def logprobs(prefixes: list[list[int]]) -> np.ndarray:
    return full(np.tile(src_row, (len(prefixes), 1)), np.array(prefixes, np.int32))[:, len(prefixes[0]) - 1]
  return logprobs


def rows_of(ids: np.ndarray, pad_id: int) -> list[list[int]]:
  """Each row of a padded ids array without its trailing padding."""
  rows = ids.tolist()
  for row in rows:
    while row and row[-1] == pad_id: row.pop()
  return rows


# --- the cached step ----------------------------------------------------------------------------------------------

def test_cached_step_gives_the_full_forward_log_probs(model, full):
  rng = np.random.default_rng(0)
  tgt = np.concatenate([np.full((3, 1), model.config.start_id), rng.integers(3, 64, (3, 11))], 1).astype(np.int32)
  cached = gen.incremental_logprobs(model, SRC, tgt)
  uncached = full(SRC, tgt)[:, :12]
  assert cached.shape == (3, 12, 64)
  assert np.abs(cached - uncached).max() <= 1e-5
  np.testing.assert_array_equal(cached.argmax(-1), uncached.argmax(-1))


def test_cache_mask_lets_position_pos_see_slots_up_to_pos_only():
  mask = tfm.nn.attention.KVCache(1, 1, 6, 2, DEVICE).mask(3).numpy()
  np.testing.assert_array_equal(mask.reshape(-1), [True, True, True, True, False, False])


def test_step_logits_over_a_padded_vocabulary_equal_the_generator():
  # 70 tokens: the decode step's generator runs over 128 rows (GENERATOR_MULTIPLE) and slices 70 off
  m = randomize(tfm.Transformer(tfm.TransformerConfig.preset("tiny", vocab_size=70, output_bias=True), device=DEVICE), seed=4)
  x = Tensor(np.random.default_rng(0).standard_normal((3, 1, 32)).astype(np.float32), device=DEVICE)
  with m.on_device(): padded, plain = m.step_logits(x).numpy(), m.generator(x).numpy()
  assert padded.shape == (3, 1, 70)
  np.testing.assert_allclose(padded, plain, rtol=0, atol=1e-5)


# --- greedy ---------------------------------------------------------------------------------------------------------

def test_greedy_takes_the_argmax_of_the_full_forward_pass_at_every_step(model, full):
  ids, scores = tfm.generate(model, SRC, max_len=12, return_scores=True)
  c = model.config
  rows = rows_of(ids, c.pad_id)
  lp = full(SRC, np.array([[c.start_id] + row + [c.pad_id] * (12 - len(row)) for row in rows], np.int32))
  for i, row in enumerate(rows):
    assert lp[i, :len(row)].argmax(-1).tolist() == row
    assert len(row) == 12 or row[-1] == c.eos_id and c.eos_id not in row[:-1]
    assert scores[i] == pytest.approx(lp[i, np.arange(len(row)), row].sum() / len(row), abs=1e-5)
  assert any(c.eos_id in row for row in rows) and not all(c.eos_id in row for row in rows), "want rows ending both ways"


def test_beam_search_with_one_beam_is_greedy(model):
  greedy_ids, greedy_scores = gen.greedy_search(model, SRC, max_len=12, return_scores=True)
  beam_ids, beam_scores = gen.beam_search(model, SRC, beam_size=1, max_len=12, return_scores=True)
  np.testing.assert_array_equal(beam_ids, greedy_ids)
  np.testing.assert_allclose(beam_scores, greedy_scores, atol=1e-6)


@pytest.mark.parametrize("beams,vocab", [(4, 58101), (2, 2000), (8, 4000), (1, 20000), (4, 64)])   # the last: unpruned
def test_beam_ranking_by_chunks_equals_ranking_every_continuation(beams, vocab):
  # best_continuations against a full stable sort of every (beam, token) sum; ties (rounded scores, -inf bans,
  # beams started at -1e9) must come out lower index first, as the full sort orders them
  rng = np.random.default_rng(vocab)
  rows, cands = 3, 2 * beams
  for trial in range(6):
    lp = rng.standard_normal((rows * beams, vocab)).astype(np.float32) - 10
    if trial % 3 == 1: lp = np.round(lp * 2) / 2
    if trial % 3 == 2: lp[:, rng.integers(0, vocab, vocab // 2)] = -np.inf
    running = rng.standard_normal((rows, beams)).astype(np.float32)
    if trial == 0: running[:, 1:] = -1e9
    acc = (lp.reshape(rows, beams, vocab) + running[:, :, None]).reshape(rows, beams * vocab)
    expected = np.argsort(-acc, axis=1, kind="stable")[:, :cands]
    top, scores = best_continuations(lp, running, cands)
    np.testing.assert_array_equal(top, expected)
    np.testing.assert_array_equal(scores, np.take_along_axis(acc, expected, 1))
  lp[:beams] = np.nan   # a row of NaN scores (an overflowed float16 model) is ranked as the full sort ranks it
  acc = (lp.reshape(rows, beams, vocab) + running[:, :, None]).reshape(rows, beams * vocab)
  np.testing.assert_array_equal(best_continuations(lp, running, cands)[0], np.argsort(-acc, axis=1, kind="stable")[:, :cands])


# --- beam search against the numpy reference -----------------------------------------------------------------------

SETTINGS = {
  "beam4": dict(beam_size=4, max_len=10),
  "beam3 penalty0.6 no-early-stop min_len3": dict(beam_size=3, max_len=10, length_penalty=0.6, early_stopping=False, min_len=3),
  "beam4 penalty2 never n-best2 forced-eos suppressed": dict(beam_size=4, max_len=8, length_penalty=2.0, early_stopping="never",
                                                              num_return=2, forced_eos_id=2, suppress_ids=(5, 6)),
}


@pytest.mark.parametrize("name", SETTINGS)
def test_beam_search_agrees_with_the_numpy_reference(model, full, name, monkeypatch):
  settings = dict(SETTINGS[name])
  forced, suppress = settings.pop("forced_eos_id", None), settings.pop("suppress_ids", ())
  if forced is not None:  # these two come from a checkpoint's generation_config only
    monkeypatch.setattr(model, "generation_config", {"forced_eos_token_id": forced, "bad_words_ids": [[i] for i in suppress]},
                        raising=False)
  ids, scores = gen.beam_search(model, SRC, return_scores=True, **settings)
  c, n = model.config, settings.get("num_return", 1)
  expected = []
  for i in range(len(SRC)):
    expected += reference_beam_search(next_token_logprobs(full, SRC[i]), c.start_id, c.eos_id, forced_eos_id=forced,
                                      suppress_ids=suppress, **settings)
  assert ids.shape[0] == len(SRC) * n
  assert rows_of(ids, c.pad_id) == [tokens for tokens, _ in expected]
  np.testing.assert_allclose(scores, [score for _, score in expected], atol=1e-4)
  ended = [c.eos_id in row for row in ids]
  assert any(ended), "some hypothesis should end with eos"
  if forced is not None: assert all(ended) and not np.isin(ids, suppress).any()
  if settings.get("min_len"): assert all(row.index(c.eos_id) >= settings["min_len"] for row in rows_of(ids, c.pad_id) if c.eos_id in row)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_rows_of_a_batch_decode_as_if_alone(model, beam_size):
  ids, scores = tfm.generate(model, SRC, beam_size=beam_size, max_len=10, return_scores=True)
  c = model.config
  for i in range(len(SRC)):
    alone_ids, alone_scores = tfm.generate(model, SRC[i:i + 1, :int((SRC[i] != c.pad_id).sum())], beam_size=beam_size,
                                           max_len=10, return_scores=True)
    assert rows_of(ids[i:i + 1], c.pad_id) == rows_of(alone_ids, c.pad_id)
    assert scores[i] == pytest.approx(alone_scores[0], abs=1e-5)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_outgrowing_the_first_cache_changes_nothing(model, monkeypatch, beam_size):
  before = tfm.generate(model, SRC, beam_size=beam_size, max_len=40, min_len=40, return_scores=True)
  monkeypatch.setattr(gen.session, "FIRST_CACHE_LEN", 16)  # caches of 16, then 32, then 64 slots
  after = tfm.generate(model, SRC, beam_size=beam_size, max_len=40, min_len=40, return_scores=True)
  assert before[0].shape == (3, 40)
  np.testing.assert_array_equal(after[0], before[0])
  np.testing.assert_allclose(after[1], before[1], atol=1e-6)


# --- settings ------------------------------------------------------------------------------------------------------

def test_generation_config_gives_the_defaults(model, monkeypatch):
  monkeypatch.setattr(model, "generation_config", {"num_beams": 4, "max_length": 11}, raising=False)
  # keys it leaves out take Hugging Face's defaults (early_stopping False), as an imported checkpoint would decode there
  np.testing.assert_array_equal(tfm.generate(model, SRC), gen.beam_search(model, SRC, beam_size=4, max_len=10, early_stopping=False))
  assert gen.resolve_settings(model, np.array([5]), beam_size=2).beam_size == 2  # an argument wins


def test_generation_config_keys_map_to_settings(model, monkeypatch):
  monkeypatch.setattr(model, "generation_config", {"num_beams": 6, "max_length": 512, "min_length": 3, "length_penalty": 0.6,
                                                   "bad_words_ids": [[63], [4, 5]], "forced_eos_token_id": 2,
                                                   "decoder_start_token_id": 7, "no_repeat_ngram_size": 3,
                                                   "repetition_penalty": 1.2, "num_beam_groups": 2}, raising=False)
  with pytest.warns(UserWarning, match="num_beam_groups=2, which tfm.generate does not implement"):
    s = gen.resolve_settings(model, np.array([5]))
  assert (s.beam_size, s.max_len, s.min_len, s.length_penalty, s.early_stopping) == (6, 64, 2, 0.6, False)
  assert (s.suppress_ids, s.forced_eos_id, s.start_id) == ((63,), 2, 7)
  assert (s.no_repeat_ngram_size, s.repetition_penalty, s.bad_words, s.sample) == (3, 1.2, ((4, 5),), False)


def test_default_max_len_is_source_length_plus_50_capped_by_config(model):
  assert gen.resolve_settings(model, np.array([3, 9])).max_len == min(9 + 50, model.config.max_len)
  short = tfm.Transformer(model.config.replace(max_len=128), device=DEVICE, initialise=False)
  assert gen.resolve_settings(short, np.array([3, 9])).max_len == 59


def test_generate_sees_weights_replaced_after_a_call(model):
  before = gen.greedy_search(model, SRC, max_len=6)
  bias = model.generator.bias
  original = bias.numpy()
  favoured = np.full_like(original, -50.0)
  favoured[7] = 50.0
  bias.replace(Tensor(favoured, device=model.device).realize())
  try: after = gen.greedy_search(model, SRC, max_len=6)
  finally: bias.replace(Tensor(original, device=model.device).realize())
  assert (after == 7).all() and not (before == 7).all()


@contextlib.contextmanager
def every_layer_packed(model):
  """Decoding with every Linear layer of the tiny model packed (tfm.nn.linear.Linear.pack: at real sizes they pack, the
  tiny model's are below PACK_MIN), in sessions of their own."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(linear, "PACK_MIN", 0)
    gen.forget_sessions(model)
    try: yield
    finally: gen.forget_sessions(model)
  for layer in linear.linear_layers(model): layer.unpack()


def test_decoding_from_packed_weights_gives_the_same_ids_and_scores(model):
  expected = [gen.greedy_search(model, SRC, max_len=8, return_scores=True), tfm.generate(model, SRC, beam_size=3, max_len=8, return_scores=True)]
  with every_layer_packed(model):
    got = [gen.greedy_search(model, SRC, max_len=8, return_scores=True), tfm.generate(model, SRC, beam_size=3, max_len=8, return_scores=True)]
    assert all(layer.packed is not None for layer in linear.linear_layers(model))
  for (ids, scores), (want_ids, want_scores) in zip(got, expected):
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_generate_sees_weights_written_in_place_after_a_call(model, full):
  # the same buffers, as a training step writes them: decoding reads packed copies, which each call refreshes
  layer = model.decoder.layers[-1].ffn.fc2
  original, buffer = layer.weight.numpy(), layer.weight.uop.buffer
  with every_layer_packed(model):
    before = gen.greedy_search(model, SRC, max_len=8)
    layer.weight.assign(Tensor(original * -6, device=model.device)).realize()
    try:
      assert layer.weight.uop.buffer is buffer and layer.packed is not None
      after = gen.greedy_search(model, SRC, max_len=8)
      lp = full(SRC, np.concatenate([np.full((len(SRC), 1), model.config.start_id, np.int32), after[:, :7]], 1))
    finally: layer.weight.assign(Tensor(original, device=model.device)).realize()
  assert (after != before).any()
  for i, row in enumerate(rows_of(after, model.config.pad_id)):
    assert lp[i, :len(row)].argmax(-1).tolist() == row


@pytest.mark.parametrize("kwargs, match", [
  (dict(max_len=65), "max_len=65"),
  (dict(max_len=0), "max_len=0"),
  (dict(beam_size=0), "beam_size=0"),
  (dict(beam_size=2, num_return=3), "num_return=3"),
  (dict(min_len=-1), "min_len=-1"),
  (dict(beam_size=2, early_stopping="sometimes"), "early_stopping"),
  (dict(length_penalty=float("nan")), "length_penalty"),
])
def test_bad_settings_are_rejected_with_the_fix(model, kwargs, match):
  with pytest.raises(tfm.InputError, match=match): tfm.generate(model, SRC, **kwargs)


@pytest.mark.parametrize("src, match", [
  (np.array([[5, 6], [0, 0]]), "row 1 holds only pad"),
  (np.array([[5.0, 6.0]]), "integer token ids"),
  (np.array([[5, 64]]), "token id 64 out of range"),
  (np.array([5, 6]), "shape"),
])
def test_bad_sources_are_rejected_with_the_fix(model, src, match):
  with pytest.raises(tfm.InputError, match=match): tfm.generate(model, src)


def test_a_model_is_required():
  with pytest.raises(tfm.InputError, match="tfm.Transformer"): tfm.generate("model", SRC)


# --- Translator ----------------------------------------------------------------------------------------------------

CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ012345678"  # 61 characters + 3 specials: the model's 64 ids

def test_translator_batches_texts_and_decodes_what_generate_produces(model):
  tokenizer = CharTokenizer(CHARS)
  translator = tfm.Translator(model, tokenizer)
  texts = ["hello", "ab", "tinygrad"]
  out, scores = translator.translate(texts, beam_size=4, max_len=10, return_scores=True)
  src = np.zeros((3, 9), np.int32)
  for i, ids in enumerate(tokenizer.encode(texts)): src[i, :len(ids)] = ids
  ids, expected_scores = tfm.generate(model, src, beam_size=4, max_len=10, return_scores=True)
  assert out == tokenizer.decode(ids.tolist())
  np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
  assert translator.translate(["ab"], max_len=10) == tokenizer.decode(tfm.generate(model, src[1:2, :3], max_len=10).tolist())


def test_translator_refuses_a_text_longer_than_the_model_takes(model):
  translator = tfm.Translator(model, CharTokenizer("ab"))
  with pytest.raises(tfm.InputError, match="text 1 is 65 tokens long, more than the model's max_len=64"):
    translator.translate(["ab", "a" * 64])


def test_translate_command_prints_one_line_per_text(model, tmp_path, capsys):
  tokenizer = CharTokenizer(CHARS)
  tfm.save(model, tmp_path / "m.safetensors")
  tokenizer.save(tmp_path / "m.vocab.json")
  assert main(["translate", "--model", str(tmp_path / "m.safetensors"), "--device", DEVICE, "--beam", "2", "--max-len", "6",
               "abc", "jihgfe"]) == 0
  expected = tfm.Translator(model, tokenizer).translate(["abc", "jihgfe"], beam_size=2, max_len=6)
  assert capsys.readouterr().out.splitlines() == expected


@pytest.mark.skipif(not Path(translator_module.BUNDLED_MODEL).exists(), reason="the bundled model is not installed")
def test_bundled_translator_writes_dates_in_iso_form():
  translator = tfm.Translator.bundled(device=DEVICE)
  assert translator.translate(["3rd of March, 2021", "July 4, 1976"]) == ["2021-03-03", "1976-07-04"]


def test_bundled_translator_says_when_its_files_are_missing(monkeypatch, tmp_path):
  monkeypatch.setattr(translator_module, "BUNDLED_MODEL", str(tmp_path / "dates.safetensors"))
  with pytest.raises(tfm.WeightsError, match="bundled model is missing"): tfm.Translator.bundled()


def test_translator_rejects_a_tokenizer_that_does_not_fit_the_model(model):
  too_many = CharTokenizer("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!?.,;:-+")  # 73 ids
  with pytest.raises(tfm.InputError, match="vocab_size=73 exceeds the model's vocab_size=64"): tfm.Translator(model, too_many)


# --- Hugging Face parity ---------------------------------------------------------------------------------------------

MARIAN_SRC = np.array([[5, 9, 12, 33, 0, 63, 63], [7, 8, 9, 10, 11, 40, 0], [20, 21, 0, 63, 63, 63, 63]])  # eos 0, pad 63


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
  """A random Marian checkpoint (opus-mt layout: pad 63 starts the decoder and is never generated, eos 0 is forced at
  the last step), as transformers and as tfm.from_pretrained load it. Its weights are scaled so that hypotheses end at
  different lengths and greedy and beam search disagree, as a trained model's would."""
  torch = pytest.importorskip("torch", reason="PyTorch not installed")
  transformers = pytest.importorskip("transformers", reason="transformers not installed")
  config = transformers.MarianConfig(vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                     decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                                     pad_token_id=63, eos_token_id=0, decoder_start_token_id=63, forced_eos_token_id=0,
                                     activation_function="swish", dropout=0.0)
  torch.manual_seed(0)
  theirs = transformers.MarianMTModel(config).eval()
  with torch.no_grad():
    for name, p in theirs.named_parameters():
      if "embed_positions" in name: continue  # the fixed sinusoid table
      if "layer_norm" in name and name.endswith("weight"): p.copy_(1 + 0.2 * torch.randn_like(p))
      else: p.copy_(torch.randn_like(p) * (1.0 if "shared" in name or "embed" in name else 0.3 if p.ndim == 2 else 0.2))
    theirs.final_logits_bias.zero_()
    theirs.final_logits_bias[0, 0] = 1.0  # eos
  theirs.generation_config.bad_words_ids = [[63]]
  folder = tmp_path_factory.mktemp("marian")
  theirs.save_pretrained(folder, safe_serialization=True)
  return torch, theirs, tfm.from_pretrained(folder, device=DEVICE)


@pytest.mark.parametrize("settings", [dict(num_beams=1), dict(num_beams=4), dict(num_beams=4, early_stopping=True, length_penalty=0.6),
                                      dict(num_beams=4, num_return_sequences=2, length_penalty=2.0)], ids=str)
def test_marian_generates_what_transformers_generates(marian, settings):
  torch, theirs, ours = marian
  with torch.no_grad():
    out = theirs.generate(torch.from_numpy(MARIAN_SRC), attention_mask=torch.from_numpy(MARIAN_SRC != 63), max_length=16,
                          output_scores=True, return_dict_in_generate=True, **settings)
  ids, scores = tfm.generate(ours, MARIAN_SRC, max_len=15, beam_size=settings["num_beams"], return_scores=True,
                             early_stopping=settings.get("early_stopping"), length_penalty=settings.get("length_penalty"),
                             num_return=settings.get("num_return_sequences"))
  expected = rows_of(out.sequences.numpy()[:, 1:], 63)
  assert rows_of(ids, 63) == expected
  if settings.get("length_penalty", 1.0) <= 1.0:  # a larger penalty favours running to max_len
    assert len({len(row) for row in expected}) > 1, "hypotheses should end at different lengths"
  if settings["num_beams"] > 1: np.testing.assert_allclose(scores, out.sequences_scores.numpy(), atol=1e-4)


@pytest.mark.filterwarnings("ignore:Using the model-agnostic default")  # theirs, about the default tested here
def test_marian_decodes_with_its_generation_config_by_default(marian):
  torch, theirs, ours = marian
  with torch.no_grad():
    expected = theirs.generate(torch.from_numpy(MARIAN_SRC), attention_mask=torch.from_numpy(MARIAN_SRC != 63), num_beams=3)
  assert rows_of(tfm.generate(ours, MARIAN_SRC, beam_size=3), 63) == rows_of(expected.numpy()[:, 1:], 63)


# --- the decode benchmark (a smoke test: no timing is asserted) -----------------------------------------------------

def test_decode_benchmark_rows(tmp_path):
  pytest.importorskip("torch", reason="PyTorch not installed")
  from benchmarks.__main__ import main as bench_main
  out = tmp_path / "decode.json"
  assert bench_main(["decode", "--configs", "tiny", "--backends", DEVICE, "--batches", "2", "--beams", "1", "--tokens", "4",
                     "--reps", "1", "--json", str(out)]) == 0
  (row,) = json.loads(out.read_text())
  assert (row["search"], row["batch"], row["tokens"]) == ("greedy", 2, 4)
  assert row["same_ids"] is True  # greedy ids equal PyTorch's on the same weights
  assert row["kernels"] > 0 and row["ratio"] == pytest.approx(row["per_token_ms"] / row["torch_ms"])
