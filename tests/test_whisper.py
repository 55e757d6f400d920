"""Whisper decoding (tfm.generation.whisper) gives what transformers' WhisperForConditionalGeneration.generate gives for
one 30 s window: the committed tiny checkpoint with Whisper's special-token layout and transformers' outputs for it
(tests/make_whisper_fixtures.py): ids and scores of greedy and beam search, with and without timestamps, for both
tasks, languages given or detected, and with previous text as a prompt. Bad requests are refused by name."""
import json
from pathlib import Path

import numpy as np
import pytest

import tfm
from tfm.generation import Timestamps, detect_language, whisper_generate, whisper_segments, whisper_tokens
from tfm.generation.rules import timestamps as timestamp_rules
from tfm.generation.settings import GenerationSettings
from tests.conftest import DEVICE

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "whisper_tokens.json").read_text())
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model():
  return tfm.from_pretrained(FIXTURES / "whisper_tokens", device=DEVICE)


@pytest.fixture(scope="module")
def features():
  return np.array(EXPECTED["features"], np.float32)


def case_id(case: dict) -> str:
  s = case["settings"]
  return (f"{'detected' if s['language'] is None else 'given'}-{s['task']}-{'timestamps' if s['return_timestamps'] else 'text'}-"
          f"beam{s['num_beams']}{'-prompt' if case['prompt_ids'] else ''}")


def test_the_special_tokens_and_rules_are_read_from_the_generation_config(model):
  t = whisper_tokens(model)
  assert (t.eot, t.sot, t.translate, t.transcribe, t.prev_sot, t.no_timestamps, t.timestamp_begin) == (300, 301, 306, 307, 309, 311, 312)
  assert t.lang_to_id == {"en": 302, "de": 303, "fr": 304, "es": 305} and t.multilingual
  assert t.begin_suppress_ids == (220, 300) and 306 in t.suppress_ids and t.max_initial_timestamp_index == 10


@pytest.mark.parametrize("case", EXPECTED["cases"], ids=case_id)
def test_decodes_as_transformers_generate(model, features, case):
  s = case["settings"]
  out = whisper_generate(model, features, language=s["language"], task=s["task"], timestamps=s["return_timestamps"],
                         beam_size=s["num_beams"], length_penalty=s["length_penalty"], max_len=EXPECTED["max_new_tokens"],
                         prompt_ids=case["prompt_ids"], return_scores=True)
  assert [o.ids.tolist() for o in out] == case["ids"]
  assert all(o.ids.dtype == np.int32 for o in out)
  assert [o.language for o in out] == case["languages"]
  np.testing.assert_allclose([o.score for o in out], case["scores"], atol=TOLERANCE)


def test_the_fixture_exercises_what_it_checks():
  """Timestamps appear (and only where asked to come first), tasks and timestamps change the decode, some rows end
  early, and the detected languages are not all one: the comparisons above test something."""
  cases = {case_id(c): c["ids"] for c in EXPECTED["cases"]}
  assert cases["given-transcribe-text-beam1"] != cases["given-translate-text-beam1"]
  assert cases["given-transcribe-text-beam1"] != cases["given-transcribe-timestamps-beam1"]
  for name, ids in cases.items():
    if "timestamps" in name: assert all(312 <= row[0] <= 312 + 10 for row in ids), name   # max_initial_timestamp_index 10
  assert any(len(row) < EXPECTED["max_new_tokens"] for ids in cases.values() for row in ids)
  assert len({code for code, _ in EXPECTED["detected"]}) > 1


def test_detects_the_language_transformers_detects(model, features):
  found = detect_language(model, features)
  assert [code for code, _ in found] == [code for code, _ in EXPECTED["detected"]]
  np.testing.assert_allclose([p for _, p in found], [p for _, p in EXPECTED["detected"]], atol=TOLERANCE)


def test_timestamp_rules_pair_timestamps_and_never_go_back():
  s = GenerationSettings(max_len=8, timestamps=Timestamps(no_timestamps_id=4, max_initial_index=2))   # text 0..3 (eos 3), times 5..
  flat = np.zeros((1, 12), np.float32)
  first = timestamp_rules(flat, np.zeros((1, 0), np.int64), s, 3)
  assert np.isfinite(first[0]).nonzero()[0].tolist() == [5, 6, 7]                 # a timestamp, at most 2 steps in
  after_pair = timestamp_rules(flat, np.array([[6, 6]]), s, 3)
  assert np.isfinite(after_pair[0]).nonzero()[0].tolist() == [0, 1, 2, 3]          # after a pair: text (timestamps sum > a text token: not here)
  text = np.array([[0, 0, 0, 0, 0, -9, -9, -9, -9, -9, -9, -9]], np.float32)
  after_one = timestamp_rules(text, np.array([[6, 1, 8]]), s, 3)
  assert np.isfinite(after_one[0]).nonzero()[0].tolist() == [3, 8, 9, 10, 11]      # closing a pair: eos or a timestamp >= 8
  after_text = timestamp_rules(text, np.array([[6, 1]]), s, 3)
  assert np.isfinite(after_text[0]).nonzero()[0].tolist() == [0, 1, 2, 3, 7, 8, 9, 10, 11]   # never back, nor 6 again
  likely_times = timestamp_rules(np.zeros((1, 12), np.float32), np.array([[6, 1]]), s, 3)
  assert np.isfinite(likely_times[0]).nonzero()[0].tolist() == [7, 8, 9, 10, 11]   # their total beats any text token


def test_unknown_language_is_refused_with_the_known_ones(model, features):
  with pytest.raises(tfm.InputError, match=r"unknown language 'xx' for this Whisper checkpoint; it knows de, en, es, fr"):
    whisper_generate(model, features, language="xx", max_len=4)
  with pytest.raises(tfm.InputError, match=r"language has 2 entries for 3 rows"):
    whisper_generate(model, features, language=["en", "de"], max_len=4)
  with pytest.raises(tfm.InputError, match=r"task='summarize': choose 'transcribe' or 'translate'"):
    whisper_generate(model, features, language="en", task="summarize", max_len=4)


def test_a_decode_longer_than_the_decoder_is_refused(model, features):
  with pytest.raises(tfm.InputError, match=r"max_len=45 and a decoder prompt of 4 tokens exceed the decoder's 48 positions: use max_len <= 44"):
    whisper_generate(model, features, language="en", max_len=45)


def test_checkpoints_without_what_whisper_decoding_needs_are_refused(model, features):
  kept = model.generation_config
  try:
    model.generation_config = {k: v for k, v in kept.items() if k != "no_timestamps_token_id"}
    with pytest.raises(tfm.InputError, match=r"timestamps=True needs the checkpoint's no_timestamps_token_id"):
      whisper_generate(model, features, language="en", timestamps=True, max_len=4)
    model.generation_config = {k: v for k, v in kept.items() if k != "lang_to_id"}
    with pytest.raises(tfm.InputError, match=r"generation_config lacks lang_to_id, which Whisper decoding needs"):
      whisper_tokens(model)
    model.generation_config = {**kept, "is_multilingual": False}
    with pytest.raises(tfm.InputError, match=r"English-only: it only transcribes"):
      whisper_generate(model, features, task="translate", max_len=4)
  finally:
    model.generation_config = kept
  with pytest.raises(tfm.InputError, match=r"whisper decoding needs a Whisper model"):
    whisper_tokens("openai/whisper-tiny")


@pytest.mark.parametrize("case", [c for c in EXPECTED["cases"] if "segments" in c], ids=case_id)
def test_segments_cut_as_transformers_cuts_them(model, case):
  tokens = whisper_tokens(model)
  for row, expected in zip(case["ids"], case["segments"]):
    got = whisper_segments(row, tokens, frames=32)
    np.testing.assert_allclose([(s.start, s.end) for s in got], [(start, end) for start, end, _ in expected], atol=1e-9)
    assert [s.ids.tolist() for s in got] == [[t for t in ids if t < tokens.timestamp_begin] for _, _, ids in expected]


def test_a_decode_without_a_pair_of_timestamps_is_one_segment_to_its_last_timestamp(model):
  tokens = whisper_tokens(model)
  [one] = whisper_segments([312 + 5, 40, 41, 312 + 9], tokens)
  assert (one.start, one.end, one.ids.tolist()) == (0.0, pytest.approx(0.18), [40, 41])
  [whole] = whisper_segments([312, 40], tokens)
  assert whole.end == pytest.approx(30.0)   # only <|0.00|>: to the window's end


def test_decoder_prompts_of_different_lengths_are_refused(model, features):
  with pytest.raises(tfm.InputError, match=r"decoder_prompt must be one list of token ids per source, all of one length"):
    tfm.generate(model, features, max_len=4, decoder_prompt=[[301], [301, 302], [301]])


def test_an_english_only_checkpoint_decodes_without_language_or_task_tokens(model, features):
  kept = model.generation_config
  try:
    model.generation_config = {**{k: v for k, v in kept.items() if k not in ("lang_to_id", "task_to_id")}, "is_multilingual": False}
    assert not whisper_tokens(model).multilingual
    out = whisper_generate(model, features, max_len=EXPECTED["max_new_tokens"], return_scores=True)
    with pytest.raises(tfm.InputError, match=r"language='de': this Whisper checkpoint is English-only"):
      whisper_generate(model, features, language="de", max_len=4)
  finally:
    model.generation_config = kept
  assert [o.ids.tolist() for o in out] == EXPECTED["english_only"]["ids"] and {o.language for o in out} == {"en"}
  np.testing.assert_allclose([o.score for o in out], EXPECTED["english_only"]["scores"], atol=TOLERANCE)


def test_rows_whose_language_is_none_are_detected_and_the_others_decoded_as_given(model, features):
  cases = {case_id(c): c for c in EXPECTED["cases"]}
  given, detected = cases["given-transcribe-text-beam1"], cases["detected-transcribe-text-beam1"]
  out = whisper_generate(model, features, language=["en", None, "<|fr|>"], max_len=EXPECTED["max_new_tokens"])
  assert [o.language for o in out] == ["en", detected["languages"][1], "fr"]
  assert [o.ids.tolist() for o in out] == [given["ids"][0], detected["ids"][1], given["ids"][2]]
