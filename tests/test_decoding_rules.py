"""The decoding rules that depend on each hypothesis (repetition penalty, no-repeat n-grams, bad word sequences,
target prefixes) give transformers' generate ids and scores on the committed Marian model (tests/fixtures/
marian_decoding.json, made by make_fixtures.py); sampling follows its distribution, repeats under a seed and differs
without one."""
import json
from pathlib import Path

import numpy as np
import pytest

import backends
import tfm
from tfm import cli
from tfm.errors import InputError
from tfm.generation import rules
from tfm.generation.settings import GenerationSettings

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DECODING = json.loads((FIXTURES / "marian_decoding.json").read_text())
SRC, MAX_LEN, PAD = np.array(DECODING["src"]), DECODING["max_len"], 63


def rows_of(ids) -> list[list[int]]:
  return [[int(t) for t in row if t != PAD] for row in np.asarray(ids)]


@pytest.fixture(scope="module")
def marian():
  return tfm.from_pretrained(FIXTURES / "marian_tiny", device="CPU")


def ours(settings: dict) -> dict:
  """transformers' generate keywords -> tfm.generate's."""
  names = {"num_beams": "beam_size", "repetition_penalty": "repetition_penalty", "no_repeat_ngram_size": "no_repeat_ngram_size",
           "bad_words_ids": "bad_words", "num_return_sequences": "num_return"}
  return {names[k]: v for k, v in settings.items()}


@pytest.mark.parametrize("case", DECODING["cases"], ids=lambda c: str(c["settings"]))
def test_rules_decode_as_transformers_does(marian, case):
  ids, scores = tfm.generate(marian, SRC, max_len=MAX_LEN, return_scores=True, **ours(case["settings"]))
  assert rows_of(ids) == rows_of(case["ids"])
  if "scores" in case: np.testing.assert_allclose(scores, case["scores"], atol=1e-4)
  plain = next(c for c in DECODING["cases"] if c["settings"] == {"num_beams": case["settings"]["num_beams"]})
  if len(case["settings"]) > 1: assert rows_of(case["ids"])[:2] != rows_of(plain["ids"]), "the rule should change the output"


def test_a_target_prefix_is_continued_as_transformers_continues_it(marian):
  prefixes = DECODING["prefixes"]
  ids = tfm.generate(marian, SRC[[p["row"] for p in prefixes]], max_len=MAX_LEN, beam_size=1,
                     target_prefix=[p["prefix"] for p in prefixes])
  assert rows_of(ids) == [p["ids"] for p in prefixes]
  beams = tfm.generate(marian, SRC, max_len=MAX_LEN, beam_size=4, target_prefix=[p["prefix"] for p in prefixes])
  assert all(row[:len(p["prefix"])] == p["prefix"] for row, p in zip(rows_of(beams), prefixes))


def test_the_rules_are_what_they_say_on_a_hand_made_history():
  history = np.array([[9, 1, 2, 1, 3]])   # start token 9; an n-gram "1 2" exists, the history ends with 1
  scores = np.array([[0.5, 2.0, -1.0, 4.0, -2.0, 0.0, 0.0, 0.0, 0.0, 1.0]], np.float32)
  s = GenerationSettings(max_len=8, repetition_penalty=2.0)
  np.testing.assert_array_equal(rules.apply(scores, history, s), [[0.5, 1.0, -2.0, 2.0, -2.0, 0, 0, 0, 0, 0.5]])
  banned = rules.apply(scores, history[:, :4], GenerationSettings(max_len=8, no_repeat_ngram_size=2))   # ... 2 1: "1 2" again
  assert np.isneginf(banned[0, 2]) and np.isfinite(np.delete(banned[0], 2)).all()
  words = rules.apply(scores, history, GenerationSettings(max_len=8, bad_words=((1, 3, 4), (2, 4), (3, 0))))
  assert np.isneginf(words[0, [4, 0]]).all() and np.isfinite(np.delete(words[0], [0, 4])).all()


def test_sampling_draws_from_the_warped_distribution():
  logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
  rng = np.random.default_rng(0)
  draws = [int(rules.sample(logits, GenerationSettings(max_len=1, sample=True), rng)[0]) for _ in range(4000)]
  np.testing.assert_allclose(np.bincount(draws, minlength=4) / 4000, [0.5, 0.3, 0.15, 0.05], atol=0.03)
  nucleus = {int(rules.sample(logits, GenerationSettings(max_len=1, sample=True, top_p=0.75), rng)[0]) for _ in range(300)}
  assert nucleus == {0, 1}   # 0.5 + 0.3 reach 0.75
  top2 = {int(rules.sample(logits, GenerationSettings(max_len=1, sample=True, top_k=2), rng)[0]) for _ in range(300)}
  assert top2 == {0, 1}
  cold = [int(rules.sample(logits, GenerationSettings(max_len=1, sample=True, temperature=0.05), rng)[0]) for _ in range(200)]
  assert set(cold) == {0}


def test_sampling_repeats_under_a_seed_and_top_k_1_is_greedy():
  tr = tfm.Translator.bundled(device="CPU")
  texts = ["3rd of March, 2021", "July 4, 1976"]
  hot = dict(sample=True, temperature=1.5)
  first, again = (tr.translate(texts, seed=7, **hot) for _ in range(2))
  assert first == again and first != tr.translate(texts, seed=8, **hot)
  assert tr.translate(texts, **hot) != tr.translate(texts, **hot)   # no seed: a fresh draw each time
  streamed = "".join(tr.stream(texts[0], seed=7, **hot))
  assert streamed == tr.translate(texts[:1], seed=7, **hot)[0]   # one row: the same draws as the batch's first row
  assert tr.translate(texts, sample=True, top_k=1, seed=1) == tr.translate(texts)
  if backends.probe("CL").runs:   # host-side draws: the same on another backend, up to float32 rounding of the logits
    assert tfm.Translator.bundled(device="CL").translate(texts, seed=7, **hot) == first


def test_bad_rule_settings_are_named(marian):
  with pytest.raises(InputError, match="sampling draws one hypothesis per source: use beam_size=1"):
    tfm.generate(marian, SRC, beam_size=2, sample=True)
  with pytest.raises(InputError, match="repetition_penalty=0 must be > 0"): tfm.generate(marian, SRC, repetition_penalty=0)
  with pytest.raises(InputError, match="top_p=1.5 must be in"): tfm.generate(marian, SRC, sample=True, top_p=1.5)
  with pytest.raises(InputError, match="target_prefix has 1 entries for 2 sources"): tfm.generate(marian, SRC, target_prefix=[[1]])
  with pytest.raises(InputError, match="bad_words has an empty sequence"): tfm.generate(marian, SRC, bad_words=[[]])


def test_a_checkpoints_generation_config_sets_the_rules(marian):
  case = next(c for c in DECODING["cases"] if c["settings"] == {"num_beams": 1, "repetition_penalty": 1.5})
  saved = marian.generation_config
  marian.generation_config = {**saved, "repetition_penalty": 1.5}
  try:
    assert rows_of(tfm.generate(marian, SRC, max_len=MAX_LEN, beam_size=1)) == rows_of(case["ids"])
  finally:
    marian.generation_config = saved


def test_the_command_line_takes_a_prefix_and_seeded_sampling(capsys):
  assert cli.main(["translate", "--device", "CPU", "--prefix", "1976", "3rd of March, 2021"]) == 0
  assert capsys.readouterr().out == "1976-03-03\n"
  args = ["translate", "--device", "CPU", "--sample", "--temperature", "1.5", "--seed", "7", "3rd of March, 2021", "July 4, 1976"]
  assert cli.main(args) == 0
  first = capsys.readouterr().out
  assert cli.main(args) == 0 and capsys.readouterr().out == first
  assert cli.main(["translate", "--device", "CPU", "--prefix", "!", "July 4, 1976"]) == 2
  assert "--prefix '!'" in capsys.readouterr().err
  assert cli.main(["translate", "--device", "CPU", "--stream", "--prefix", "1976", "3rd of March, 2021"]) == 0
  assert capsys.readouterr().out == "1976-03-03\n"


def test_a_marian_prefix_is_read_with_the_target_vocabulary():
  tr = tfm.Translator.load(FIXTURES / "marian_tiny", device="CPU")
  ids = tr.tokenizer.encode_target(["die"])[0]
  assert ids == [tr.tokenizer.vocab[p] for p in tr.tokenizer.target.encode("die", out_type=str)] and tr.tokenizer.unk_id not in ids
  (text,) = tr.translate(["Hello world"], max_len=8, target_prefix=["die"])
  assert text.startswith("die") and not tr.translate(["Hello world"], max_len=8)[0].startswith("die")


def test_rules_that_leave_no_token_and_sampling_knobs_without_sampling_are_refused(marian):
  with pytest.raises(InputError, match="the decoding rules leave no token for row 0 at output position 0"):
    tfm.generate(marian, SRC, max_len=4, min_len=1, no_repeat_ngram_size=1, bad_words=[[i] for i in range(1, 64)])
  with pytest.raises(InputError, match="shape sampling: pass sample=True"): tfm.generate(marian, SRC, top_k=5)
