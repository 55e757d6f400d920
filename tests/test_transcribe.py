"""Speech to text: Whisper's tokenizer (text and timed segments), the transcript formats, the Transcriber's windows over
long audio and `tfm transcribe`, against what transformers gives for the tiny Whisper checkpoint of
tests/fixtures/whisper_tokens (tests/fixtures/whisper_transcribe.json, written by tests/make_transcribe_fixtures.py)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import tfm
from tfm import cli
from tfm.apps import subtitles
from tfm.apps.transcriber import Transcript, Transcriber
from tfm.errors import InputError, WeightsError
from tfm.generation.whisper import whisper_generate
from tfm.io.audio import log_mel
from tfm.io.whisper import Segment, WhisperTokenizer, language_code

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from audio_signals import signal  # noqa: E402
from conftest import DEVICE  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FOLDER = FIXTURES / "whisper_tokens"
EXPECTED = json.loads((FIXTURES / "whisper_transcribe.json").read_text(encoding="utf-8"))
MAX_LEN = EXPECTED["max_new_tokens"]   # one length everywhere: the steps compile once


@pytest.fixture(scope="module")
def tokenizer():
  return WhisperTokenizer.from_dir(FOLDER)


@pytest.fixture(scope="module")
def transcriber():
  return Transcriber.load(FOLDER, device=DEVICE)


def same_segments(got, want: list[dict]) -> None:
  assert [list(s.ids) for s in got] == [s["ids"] for s in want]
  assert [s.text for s in got] == [s["text"] for s in want]
  np.testing.assert_allclose([(s.start, s.end) for s in got], [(s["start"], s["end"]) for s in want], rtol=0, atol=1e-9)


# --- the tokenizer -----------------------------------------------------------------------------------------------------

def test_timestamps_begin_after_the_special_tokens(tokenizer):
  assert tokenizer.timestamp_begin == EXPECTED["timestamp_begin"] == tokenizer.no_timestamps_id + 1
  assert tokenizer.languages == {"en": 302, "de": 303, "fr": 304, "es": 305}


@pytest.mark.parametrize("case", EXPECTED["decode"], ids=lambda c: str(len(c["ids"])))
def test_decode_gives_transformers_text(tokenizer, case):
  assert tokenizer.decode(case["ids"]) == case["text"]


@pytest.mark.parametrize("case", EXPECTED["split"], ids=lambda c: f"seek{c['seek']}-frames{c['frames']}")
def test_split_cuts_segments_and_the_next_window_as_long_form_generate_does(tokenizer, case):
  segments, step = tokenizer.split(case["ids"], case["seek"] * 0.01, case["frames"])
  assert step == case["step"]
  same_segments(segments, case["segments"])


def test_decode_refuses_ids_outside_the_vocabulary(tokenizer):
  with pytest.raises(InputError, match="token id 1813 out of range for vocab_size=1813"): tokenizer.decode([5, 1813])


def test_a_folder_without_whisper_tokenizer_says_what_is_missing(tmp_path):
  with pytest.raises(WeightsError, match="no tokenizer.json"): WhisperTokenizer.from_dir(tmp_path)
  with pytest.raises(WeightsError, match="no <\\|endoftext\\|> token: it is not a Whisper tokenizer"):
    WhisperTokenizer.from_dir(FIXTURES / "bart_tiny")


# --- the formats ------------------------------------------------------------------------------------------------------

SAMPLE = Transcript(" Hello there. Second --> line", (Segment(0.0, 1.5, " Hello there."), Segment(1.5, 1.5, " "),
                                                       Segment(3599.9994, 3661.25, " Second --> line")), "en", 3662.0)


@pytest.mark.parametrize("fmt, text", [
  ("txt", "Hello there.\nSecond -> line\n"),
  ("srt", "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n2\n00:59:59,999 --> 01:01:01,250\nSecond -> line\n\n"),
  ("vtt", "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n00:59:59.999 --> 01:01:01.250\nSecond -> line\n\n"),
])
def test_text_formats_write_one_cue_per_segment_with_text(fmt, text):
  assert subtitles.render(SAMPLE, fmt) == text


def test_json_holds_text_language_and_every_segment(tmp_path):
  assert subtitles.write(SAMPLE, tmp_path / "out.json") == "json"
  assert json.loads((tmp_path / "out.json").read_text(encoding="utf-8")) == {
    "text": "Hello there. Second --> line", "language": "en", "duration": 3662.0,
    "segments": [{"id": 0, "start": 0.0, "end": 1.5, "text": "Hello there."}, {"id": 1, "start": 1.5, "end": 1.5, "text": ""},
                 {"id": 2, "start": 3599.999, "end": 3661.25, "text": "Second --> line"}]}
  assert [p.name for p in tmp_path.iterdir()] == ["out.json"]   # written through a temp file, renamed into place


def test_the_format_comes_from_the_extension_and_unknown_ones_are_refused(tmp_path):
  assert subtitles.format_of("a.SRT") == "srt" and subtitles.format_of("a.out") == "txt"
  with pytest.raises(InputError, match="unknown transcript format 'doc'; choose one of txt, srt, vtt, json"):
    subtitles.render(SAMPLE, "doc")


# --- the Transcriber --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", EXPECTED["long"], ids=lambda c: c["signal"])
def test_long_audio_is_read_window_after_window_as_transformers_generate_reads_it(transcriber, case):
  s = case["settings"]
  t = transcriber.transcribe(signal(case["signal"]), language=s["language"], task=s["task"], timestamps=True,
                             beam_size=s["num_beams"], max_len=MAX_LEN)
  same_segments(t.segments, case["segments"])
  assert (t.text, t.language) == (case["text"], case["language"])
  assert t.duration == len(signal(case["signal"])) / 16000


def test_the_language_is_detected_on_the_first_window_as_transformers_detects_it(transcriber):
  case = EXPECTED["long"][0]
  code, probability = transcriber.detect_language(signal(case["signal"]))
  assert code == case["language"] and 0.25 < probability <= 1   # the most probable of 4


def test_without_timestamps_the_windows_follow_one_another(transcriber):
  x = signal("tone_1s")   # 100 frames: windows of 32 frames at 0, 32, 64 and the last 4 frames at 96
  t = transcriber.transcribe(x, language="en", max_len=MAX_LEN)
  assert [(s.start, s.end) for s in t.segments] == [(0.0, 0.32), (0.32, 0.64), (0.64, 0.96), (0.96, 1.0)]
  features = log_mel(x, 8, None)
  windows = [np.pad(features[:, i:i + 32], ((0, 0), (0, 32 - features[:, i:i + 32].shape[1])))[None] for i in (0, 32, 64, 96)]
  want = [whisper_generate(transcriber.model, w, language="en", max_len=MAX_LEN)[0] for w in windows]
  assert [list(s.ids) for s in t.segments] == [o.ids.tolist() for o in want]
  assert t.text == transcriber.tokenizer.decode(np.concatenate([o.ids for o in want]))


def test_a_language_may_be_named_as_people_name_it(transcriber):
  x = signal("chirp_1s")[:3000]
  assert [language_code(n) for n in ("German", " haitian creole", "Mandarin", "de", "xx")] == ["de", "ht", "zh", "de", "xx"]
  named, coded = (transcriber.transcribe(x, language=n, max_len=MAX_LEN) for n in ("German", "de"))
  assert named == coded and named.language == "de"


def test_audio_up_to_one_window_is_padded_with_silence(transcriber):
  x = signal("chirp_1s")[:3000]   # 0.19 s: 18 frames
  (segment,) = transcriber.transcribe(x, language="en", max_len=MAX_LEN).segments
  (want,) = whisper_generate(transcriber.model, log_mel(x, 8, 32 * 160)[None], language="en", max_len=MAX_LEN)
  assert (segment.start, segment.end, list(segment.ids)) == (0.0, 0.18, want.ids.tolist())


def test_a_prompt_is_fed_before_every_window(transcriber):
  x = signal("chirp_1s")[:6000]   # two windows
  t = transcriber.transcribe(x, language="en", max_len=MAX_LEN, prompt=" the cat")
  prompt = transcriber.tokenizer.encode(" the cat")
  assert [309] + prompt == json.loads((FIXTURES / "whisper_tokens.json").read_text())["prompt_ids"]   # transformers' encoding
  features = log_mel(x, 8, None)
  windows = [np.pad(features[:, i:i + 32], ((0, 0), (0, 32 - features[:, i:i + 32].shape[1])))[None] for i in (0, 32)]
  want = [whisper_generate(transcriber.model, w, language="en", max_len=MAX_LEN, prompt_ids=prompt)[0].ids.tolist() for w in windows]
  assert [list(s.ids) for s in t.segments] == want


def test_transcribe_refuses_what_it_cannot_take(transcriber):
  with pytest.raises(InputError, match="Whisper's tasks are transcribe and translate"): transcriber.transcribe(signal("tone_1s"), task="summarize")
  with pytest.raises(InputError, match="1-D mono samples"): transcriber.transcribe(np.zeros((2, 1600), np.float32))
  with pytest.raises(InputError, match="give at least 160"): transcriber.transcribe(np.zeros(100, np.float32))
  with pytest.raises(InputError, match="unknown language 'xx'.*de, en, es, fr"): transcriber.transcribe(signal("tone_1s"), language="xx")
  with pytest.raises(WeightsError, match="holds a marian model, not Whisper"): Transcriber.load(FIXTURES / "marian_tiny")
  text_model = tfm.Transformer(tfm.TransformerConfig.preset("tiny"))
  with pytest.raises(InputError, match="must be a Whisper model"): Transcriber(text_model, transcriber.tokenizer)


# --- tfm transcribe ---------------------------------------------------------------------------------------------------

def test_cli_transcribes_to_the_format_its_output_names(transcriber, tmp_path, capsys):
  case = EXPECTED["long"][1]
  np.save(tmp_path / "speech.npy", signal(case["signal"]))
  argv = ["transcribe", str(tmp_path / "speech.npy"), "--model", str(FOLDER), "--device", DEVICE, "--timestamps",
          "--language", "de", "--task", "translate", "--beam-size", "1", "--max-len", str(MAX_LEN)]
  assert cli.main(argv + ["--output", str(tmp_path / "speech.json")]) == 0
  written = json.loads((tmp_path / "speech.json").read_text(encoding="utf-8"))
  assert (written["language"], written["text"]) == ("de", case["text"].strip())
  assert [(s["start"], s["end"], s["text"]) for s in written["segments"]] == \
         [(round(s["start"], 3), round(s["end"], 3), s["text"].strip()) for s in case["segments"]]
  assert cli.main(argv + ["--format", "srt"]) == 0
  want = Transcript(case["text"], tuple(Segment(s["start"], s["end"], s["text"]) for s in case["segments"]), "de", 1.0)
  assert capsys.readouterr().out == subtitles.render(want, "srt")


def test_cli_writes_each_audio_to_its_own_file_or_under_a_header(transcriber, tmp_path, capsys):
  names = ("tone_1s", "chirp_1s")
  for name in names: np.save(tmp_path / f"{name}.npy", signal(name))
  paths = [str(tmp_path / f"{name}.npy") for name in names]
  common = ["--model", str(FOLDER), "--device", DEVICE, "--language", "en", "--max-len", str(MAX_LEN)]
  assert cli.main(["transcribe", *paths, *common, "--format", "srt", "--output-dir", str(tmp_path / "subs")]) == 0
  want = [transcriber.transcribe(signal(name), language="en", max_len=MAX_LEN) for name in names]
  for name, t in zip(names, want): assert (tmp_path / "subs" / f"{name}.srt").read_text(encoding="utf-8") == subtitles.render(t, "srt")
  capsys.readouterr()
  assert cli.main(["transcribe", *paths, *common]) == 0
  assert capsys.readouterr().out == "".join(f"==> {p} <==\n" + subtitles.render(t, "txt") for p, t in zip(paths, want))
  assert cli.main(["transcribe", *paths, *common, "--format", "json"]) == 0
  assert json.loads(capsys.readouterr().out) == [{"audio": p, **subtitles.as_dict(t)} for p, t in zip(paths, want)]


@pytest.mark.parametrize("args, message", [
  (["a.wav"], "--model is required: tfm bundles no Whisper model"),
  (["a.wav", "--model", "nowhere"], "--model nowhere: no such folder"),
  (["missing.wav", "--model", str(FOLDER)], "audio missing.wav does not exist"),
  (["song.mp3", "--model", str(FOLDER)], "is MP3 audio; tfm reads WAV files and .npy arrays only: convert it with `ffmpeg"),
  (["a.wav", "b.wav", "--model", str(FOLDER), "--output", "x.txt"], "use --output-dir DIR"),
  (["a.wav", "--model", str(FOLDER), "--beam-size", "0"], "--beam-size must be at least 1"),
  (["a.wav", "x/a.npy", "--model", str(FOLDER), "--output-dir", "out"], "two AUDIO files are named a, and --output-dir would"),
])
def test_cli_says_how_to_fix_bad_input(tmp_path, monkeypatch, capsys, args, message):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "song.mp3").write_bytes(b"ID3\x03\x00" + bytes(64))
  assert cli.main(["transcribe", *args]) == 2
  assert message in capsys.readouterr().err


def test_cli_refuses_an_unknown_format(capsys):
  with pytest.raises(SystemExit): cli.main(["transcribe", "a.wav", "--format", "doc"])
  assert "invalid choice: 'doc' (choose from 'txt', 'srt', 'vtt', 'json')" in capsys.readouterr().err
