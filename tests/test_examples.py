"""The examples run as an app runs them (a fresh interpreter, tfm imported), and the attention maps they draw hold the
model's own cross-attention weights, checked against the float64 oracle."""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tinygrad import Tensor
from tinygrad.nn.state import get_state_dict

import backends
import tfm
from tfm import cli
from tfm.nn.attention import MultiHeadAttention
from tfm.apps.attention_map import AttentionMap, attention_of, cross_attention, plot
from tfm.errors import InputError, WeightsError
from tfm.reference import Reference, _softmax
from tfm.training.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
MARIAN = Path(__file__).resolve().parent / "fixtures" / "marian_tiny"
PNG = b"\x89PNG\r\n\x1a\n"
TIMEOUT = 900  # seconds; tinygrad compiles every kernel in each fresh interpreter, and CI machines are shared


def run_example(name: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, cwd=ROOT,
                        timeout=TIMEOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def bundled_missing() -> str | None:
  """Why the bundled model cannot load (Translator.bundled's own message), or None when it is installed."""
  try:
    tfm.Translator.bundled(device="CPU")
  except WeightsError as e:
    return str(e)
  return None


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  """An untrained tiny model over the reverse task's vocabulary, saved as Translator.load reads it."""
  tokenizer = get_task("reverse").tokenizer
  Tensor.manual_seed(0)
  config = tfm.TransformerConfig.preset("tiny", vocab_size=tokenizer.vocab_size, dropout=0.0)
  model = tfm.Transformer(config, device="CPU")
  folder = tmp_path_factory.mktemp("toy")
  tfm.save(model, folder / "model.safetensors")
  tokenizer.save(folder / "vocab.json")
  return tfm.Translator(model, tokenizer), folder / "model.safetensors"


# --- the attention map ----------------------------------------------------------------------------------------------

class RecordingReference(Reference):
  """The oracle, keeping the softmax of every encoder_attn (computed here in float64, as the oracle computes it)."""

  def __init__(self, *a):
    super().__init__(*a)
    self.cross = []

  def _mha(self, name, xq, xkv, allowed, bias=0.0):
    if name.endswith("encoder_attn"):
      h, (b, tq, d), tk = self.cfg["n_heads"], xq.shape, xkv.shape[1]
      q = self._linear(xq, f"{name}.q_proj").reshape(b, tq, h, d // h).transpose(0, 2, 1, 3)
      k = self._linear(xkv, f"{name}.k_proj").reshape(b, tk, h, d // h).transpose(0, 2, 1, 3)
      self.cross.append(_softmax(np.where(allowed[:, None], q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // h), -np.inf)))
    return super()._mha(name, xq, xkv, allowed, bias)


def test_attention_weights_are_the_models_cross_attention(toy):
  translator, _ = toy
  model = translator.model
  src, out = np.array([[5, 6, 7, 8, 2]]), np.array([[9, 4, 10, 2]])
  weights = attention_of(model, src, out)
  oracle = RecordingReference({k: v.numpy() for k, v in get_state_dict(model).items()}, model.config.to_dict())
  oracle.logits(src, np.concatenate([[[model.config.start_id]], out[:, :-1]], axis=1))  # the decoder input: shifted right
  assert weights.shape == (2, 4, 4, 5)  # (layers, heads, output tokens, source tokens)
  np.testing.assert_allclose(weights, np.stack([w[0] for w in oracle.cross]), atol=1e-5)


def test_recording_leaves_the_model_as_it_was(toy):
  translator, _ = toy
  model = translator.model
  src, tgt = np.array([[5, 6, 7, 2]]), np.array([[1, 7, 6]])
  before = model(src, tgt).numpy()
  attention_of(model, src, tgt)
  assert all(isinstance(layer.encoder_attn, MultiHeadAttention) for layer in model.decoder.layers)
  np.testing.assert_array_equal(model(src, tgt).numpy(), before)


def test_cross_attention_labels_the_translation_it_decoded(toy):
  translator, _ = toy
  amap = cross_attention(translator, "abcd", max_len=5)
  assert amap.source == ["a", "b", "c", "d", "</s>"]
  assert amap.translation == translator.translate(["abcd"], max_len=5)[0]
  # one row per output token: the translation's characters, the specials it decodes to nothing named as such
  assert "".join(t for t in amap.output if t not in ("<pad>", "<s>", "</s>")) == amap.translation
  assert amap.weights.shape[2:] == (len(amap.output), len(amap.source))
  np.testing.assert_allclose(amap.weights.sum(-1), 1.0, atol=1e-5)


def test_plot_writes_a_png_and_rejects_what_it_cannot_draw(toy, tmp_path):
  weights = np.full((2, 4, 3, 5), 0.2, np.float32)
  amap = AttentionMap("abcd", "dc", list("abcd") + ["</s>"], ["d", "c", "</s>"], weights)
  plot(amap, tmp_path / "map.png", layer=0)
  assert (tmp_path / "map.png").read_bytes()[:8] == PNG
  assert [p.name for p in tmp_path.iterdir()] == ["map.png"]  # written through a temp file, nothing left beside it
  with pytest.raises(InputError, match=r"layer 2 does not exist: the decoder has 2 layers \(give 0..1"):
    plot(amap, tmp_path / "other.png", layer=2)
  with pytest.raises(InputError, match="ending in .png"): plot(amap, tmp_path / "map.jpg")


def test_cli_attention_draws_the_map(toy, tmp_path, capsys):
  _, path = toy
  out = tmp_path / "cli.png"
  assert cli.main(["attention", "abc", "--model", str(path), "--device", "CPU", "--layer", "0", "--out", str(out)]) == 0
  assert out.read_bytes()[:8] == PNG
  assert f"cross-attention of decoder layer 0 written to {out}" in capsys.readouterr().out


def test_cli_attention_without_the_bundled_model_says_how_to_get_it(tmp_path, capsys, monkeypatch):
  # an installation without the model file: the bundled model's path pointed at a file that is not there
  monkeypatch.setattr("tfm.apps.translator.BUNDLED_MODEL", str(tmp_path / "dates.safetensors"))
  assert cli.main(["attention", "3rd of March, 2021", "--out", str(tmp_path / "map.png")]) == 2
  assert "the bundled model is missing from this installation" in capsys.readouterr().err


# --- the examples, each in a fresh interpreter ------------------------------------------------------------------------

def test_translate_example_writes_iso_dates():
  if (reason := bundled_missing()) is not None:
    result = run_example("translate.py")
    assert result.returncode != 0 and reason in result.stderr  # the example fails with bundled()'s own message
    pytest.skip(reason)
  result = run_example("translate.py", "3rd of March, 2021", "July 4, 1976")
  assert result.returncode == 0, result.stderr
  assert [line.split("->")[1].strip() for line in result.stdout.splitlines()] == ["2021-03-03", "1976-07-04"]


def test_attention_map_example_prints_where_each_output_token_looked(toy, tmp_path):
  _, path = toy
  result = run_example("attention_map.py", "abcd", "--model", str(path), "--max-len", "6", "--out", str(tmp_path / "map.png"))
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "map.png").read_bytes()[:8] == PNG
  looked = re.findall(r"^\s+'(.+?)' <- '(.+?)' \((\d\.\d\d)\)$", result.stdout, re.M)
  assert looked and all(src in ("a", "b", "c", "d", "</s>") and 0 < float(w) <= 1 for _, src, w in looked)


def test_marian_translate_example_prints_what_the_translator_gives():
  texts = ["Hello world.", "How are you?"]
  result = run_example("marian_translate.py", str(MARIAN), *texts, "--device", "CPU")
  assert result.returncode == 0, result.stderr
  expected = tfm.Translator.load(MARIAN, device="CPU").translate(texts)
  assert result.stdout.splitlines() == [f"{t}\t{o}" for t, o in zip(texts, expected)]


def test_transcribe_example_prints_the_segments_the_transcriber_gives():
  folder = MARIAN.parent / "whisper_tokens"
  result = run_example("transcribe.py", str(folder), "--language", "en", "--max-len", "12", "--device", "CPU")
  assert result.returncode == 0, result.stderr
  tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32)
  transcript = tfm.Transcriber.load(folder, device="CPU").transcribe(tone, language="en", max_len=12)
  assert result.stdout.splitlines() == ["language: en"] + [f"[{s.start:7.2f} -> {s.end:7.2f}] {s.text.strip()!r}" for s in transcript.segments]
  assert len(transcript.segments) == 7   # 2 s in windows of 0.32 s


def test_train_toy_example_lowers_the_loss_and_decodes_held_out_strings():
  result = run_example("train_toy.py", "--steps", "30", "--device", "CPU")
  assert result.returncode == 0, result.stderr
  first, last = map(float, re.search(r"loss (\d+\.\d+) -> (\d+\.\d+)", result.stdout).groups())
  assert last < first
  decoded = re.findall(r"^\s+([a-j]+) -> ([a-j]*)\s", result.stdout, re.M)
  assert len(decoded) == 5


def test_compare_backends_example_finds_the_backends_agree():
  names = ["CPU"] + (["CL"] if backends.probe("CL").runs else [])
  result = run_example("compare_backends.py", "--backends", ",".join(names))
  assert result.returncode == 0, result.stdout + result.stderr
  rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:]}
  assert sorted(rows) == sorted(names)
  assert all(float(diff) <= 1e-4 and same == "True" for diff, same, _ in rows.values())
