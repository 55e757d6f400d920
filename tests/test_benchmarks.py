"""Smoke tests of the benchmarks (tiny model, one repetition: no timings are asserted) and of the tuned-kernel lookup.
The PyTorch side runs where torch is installed (the `bench` extra); everything else runs without it."""
from __future__ import annotations

import importlib.util
import json
import sqlite3

import numpy as np
import pytest
from tinygrad import Context, Tensor
from tinygrad.helpers import diskcache_get, VERSION, db_connection

from benchmarks import common, report
from benchmarks.__main__ import main as bench_main
from tfm.apps import tune
from tfm.runtime import patches, tuned
from tfm.config import PRESETS
from tfm.cli import main as cli_main

HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed: pip install -e '.[bench]'")
TINY = dict(PRESETS["tiny"], n_encoder_layers=1, n_decoder_layers=1)  # every kernel kind, half the compiling


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """Run forward and train through the dispatcher on CPU, once, writing their JSON rows."""
  out = tmp_path_factory.mktemp("bench")
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(PRESETS, "tiny", TINY)
    paths = {}
    for bench in ("forward", "train"):
      paths[bench] = out / f"{bench}.json"
      assert bench_main(["--json", str(paths[bench]), bench, "--config", "tiny", "--backends", "CPU",
                         "--batch", "2", "--length", "8", "--reps", "1", *([] if HAVE_TORCH else ["--no-torch"])]) == 0
  return {bench: json.loads(path.read_text()) for bench, path in paths.items()}, paths


@needs_torch
def test_forward_rows_compare_tfm_eager_and_jit_with_torch(results, capsys):
  rows = results[0]["forward"]
  assert [(r["backend"], r["mode"]) for r in rows if not r["backend"].startswith("torch")] == [("CPU", "eager"), ("CPU", "jit")]
  assert any(r["backend"] == "torch 1T" for r in rows)
  for r in rows:
    if r["backend"] == "CPU":
      assert r["max_abs_diff"] < 1e-4  # the same weights give the same logits in both frameworks
      assert r["ratio"] == pytest.approx(r["median_ms"] / r["torch_ms"])
      assert r["kernels"] > 0 and r["command"].startswith("python -m benchmarks")


@needs_torch
def test_train_rows_report_matching_losses(results):
  (row,) = [r for r in results[0]["train"] if r["backend"] == "CPU"]
  assert row["mode"] == "jit" and row["kernels"] > 0
  assert row["max_abs_diff"] < 1e-4  # Adam steps from the same weights give the same losses


def test_memory_rows_measure_a_load_of_the_model(tmp_path):
  path = tmp_path / "memory.json"
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(PRESETS, "tiny", TINY)
    assert bench_main(["--json", str(path), "memory", "--config", "tiny", "--backends", "CPU"]) == 0
  (row,) = json.loads(path.read_text())
  cfg = common.config("tiny")
  d, v, ff = cfg.d_model, cfg.vocab_size, cfg.d_ff
  # one encoder and one decoder layer, tied embeddings: what tfm.load put on the device, in MiB
  params = v * d + (4 * (d * d + d) + d * ff + ff + ff * d + d + 4 * d) + (8 * (d * d + d) + d * ff + ff + ff * d + d + 6 * d)
  assert row["weights_mb"] == pytest.approx(params * 4 / 2**20)
  assert row["peak_mb"] > 0 and row["peak_ratio"] == pytest.approx(row["peak_mb"] / row["weights_mb"])


def test_printed_table_has_the_columns(capsys):
  common.print_rows([{"bench": "forward", "median_ms": 12.5, "ratio": None}], ["bench", "median_ms", "ratio"])
  header, line = capsys.readouterr().out.splitlines()
  assert header.split() == ["bench", "median_ms", "ratio"] and line.split() == ["forward", "12.5", "-"]


def test_report_replaces_only_the_measured_section(results, tmp_path):
  doc = tmp_path / "PERFORMANCE.md"
  doc.write_text(f"# Performance\n\nanalysis before\n\n{report.START}\nold table\n{report.END}\n\nanalysis after\n")
  assert report.main([str(p) for p in results[1].values()] + ["--doc", str(doc), "--date", "2026-11-22"]) == 0
  text = doc.read_text()
  assert "old table" not in text and "analysis before" in text and "analysis after" in text
  assert "### forward" in text and "### train" in text and "Measured 2026-11-22" in text
  assert text.count("| CPU | jit |") == 2 and not list(tmp_path.glob(".tmp-*"))


def test_untuned_backend_gets_no_settings(tmp_path, monkeypatch):
  monkeypatch.setattr("tinygrad.helpers.CACHEDB", str(tmp_path / "cache.db"))
  assert tuned.tuned_settings("CPU") == {}


def test_tuned_backend_turns_beam_on_lookup_only(tmp_path, monkeypatch, lookup_installed):   # it installs the lookup
  monkeypatch.setattr("tinygrad.helpers.CACHEDB", str(tmp_path / "cache.db"))
  tune.write_marker("CPU", {"beam": 2})
  assert tuned.tuned_settings("CPU") == {"BEAM": 2, "TFM_BEAM_LOOKUP_ONLY": 1}
  assert tuned.tuned_settings("CL") == {}


def beam_entries() -> int:
  """BEAM results in tinygrad's cache database."""
  try: return db_connection().execute(f"SELECT COUNT(*) FROM 'beam_search_{VERSION}'").fetchone()[0]
  except sqlite3.OperationalError: return 0  # no search has ever been stored


@pytest.fixture
def lookup_installed():
  """tinygrad's beam_search wrapped as a tuned backend has it, tinygrad's own again after the test."""
  installed = bool(patches._original)
  yield patches.tuned_lookup
  if not installed: patches.restore_beam_search()


def test_lookup_only_compiles_an_untuned_kernel_without_searching(lookup_installed):
  lookup_installed()
  misses, before = patches.lookups.misses, beam_entries()
  x = Tensor(np.arange(37 * 29, dtype=np.float32).reshape(37, 29), device="CPU")
  with Context(BEAM=2, TFM_BEAM_LOOKUP_ONLY=1):
    total = (x * 3).sum(axis=1).numpy()
  np.testing.assert_allclose(total, np.arange(37 * 29).reshape(37, 29).sum(1) * 3, rtol=1e-6)
  assert patches.lookups.misses > misses
  assert beam_entries() == before  # a search stores its result: nothing was stored, so nothing was searched


def test_tune_rejects_a_zero_beam(capsys):
  assert cli_main(["tune", "--config", "tiny", "--beam", "0"]) == 2
  assert "--beam must be at least 1" in capsys.readouterr().err


def test_a_kernel_searched_from_the_default_stores_the_optimizations_a_later_lookup_applies(monkeypatch, lookup_installed):
  lookup_installed(tune.search_from_default)
  monkeypatch.setattr(tune, "MIN_SEARCH_MS", 0.0)   # search even this small kernel
  stored, put = [], tune.diskcache_put
  monkeypatch.setattr(tune, "diskcache_put", lambda table, key, opts: (stored.append((key, opts)), put(table, key, opts)))
  x = Tensor(np.arange(61 * 45, dtype=np.float32).reshape(61, 45), device="CPU")
  searched = patches.lookups.searched
  with Context(BEAM=2, TFM_BEAM_LOOKUP_ONLY=0, IGNORE_BEAM_CACHE=1): total = (x * 5).sum(axis=1).numpy()
  np.testing.assert_allclose(total, np.arange(61 * 45).reshape(61, 45).sum(1) * 5, rtol=1e-6)
  assert patches.lookups.searched > searched and stored   # searched from the default optimizations, whatever was stored
  key, opts = stored[-1]
  assert key["amt"] == 2 and diskcache_get("beam_search", key) == opts   # what a later lookup finds


def test_translate_takes_a_shape_and_defaults_to_opus():
  from benchmarks.__main__ import build_parser
  parser = build_parser()
  assert parser.parse_args(["translate"]).shape == "opus"
  assert parser.parse_args(["translate", "--shape", "nllb"]).shape == "nllb"
  with pytest.raises(SystemExit): parser.parse_args(["translate", "--shape", "nllb-moe"])


def test_the_nllb_shape_is_nllb_200_distilled_600m_forcing_eng_latn_in_every_system():
  from benchmarks.translate import NEW_TOKENS, SRC_LEN
  from benchmarks.translate_models import SHAPES, _Vocabulary, sources
  shape = SHAPES["nllb"]
  c = shape.config
  assert (c["d_model"], c["encoder_layers"], c["decoder_layers"], c["encoder_attention_heads"], c["encoder_ffn_dim"]) == (1024, 12, 12, 16, 4096)
  assert (shape.vocab_size, c["max_position_embeddings"], c["activation_function"], c["scale_embedding"]) == (256206, 1024, "relu", True)
  assert (c["pad_token_id"], c["bos_token_id"], c["eos_token_id"], c["decoder_start_token_id"]) == (1, 0, 2, 2)
  assert shape.forced_bos == shape.generation["forced_bos_token_id"] == 256047 and shape.compared == NEW_TOKENS  # no forced eos
  vocab = _Vocabulary(shape)   # what CTranslate2's M2M100 converter reads: the language token is a special token at its id
  assert vocab.get_vocab()["eng_Latn"] == 256047 and len(vocab.get_vocab()) == shape.vocab_size
  assert vocab.special_tokens_map["additional_special_tokens"] == ["eng_Latn"] and vocab.convert_ids_to_tokens(2) == vocab.eos_token
  src = sources(shape, 2, SRC_LEN)
  assert all(len(row) == SRC_LEN and row[-1] == shape.eos and min(row[:-1]) >= 4 for row in src)


def test_the_opus_shape_compares_the_tokens_before_its_forced_eos():
  from benchmarks.translate import NEW_TOKENS
  from benchmarks.translate_models import SHAPES
  shape = SHAPES["opus"]
  assert shape.forced_bos is None and shape.compared == NEW_TOKENS - 1 and shape.token(shape.eos) == "</s>"


def test_the_whisper_benchmark_is_whisper_base_shaped_with_its_special_tokens_at_their_ids():
  from benchmarks.translate_models import _Vocabulary
  from benchmarks.whisper import NEW_TOKENS, PROMPT, SUPPRESSED, WHISPER
  c = WHISPER.config
  assert (c["d_model"], c["encoder_layers"], c["decoder_layers"], c["encoder_attention_heads"], c["encoder_ffn_dim"]) == (512, 6, 6, 8, 2048)
  assert (WHISPER.vocab_size, c["num_mel_bins"], c["max_source_positions"], c["max_target_positions"]) == (51865, 80, 1500, 448)
  vocab = _Vocabulary(WHISPER).get_vocab()   # what CTranslate2's converter and faster-whisper's tokenizer.json read
  names = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
  assert [vocab[n] for n in names] == PROMPT == [50258, 50259, 50359, 50363] and vocab["<|endoftext|>"] == 50257
  assert vocab["<|su|>"] == 50357 and vocab["<|0.00|>"] == 50364 and vocab["<|30.00|>"] == 51864 and len(vocab) == 51865
  assert WHISPER.generation["lang_to_id"]["<|en|>"] == 50259 and SUPPRESSED == list(range(50257, 51865)) and NEW_TOKENS == 100
  parser = bench_main.__globals__["build_parser"]()
  assert parser.parse_args(["whisper"]).modes == "greedy" and parser.parse_args(["whisper"]).threads == 2
