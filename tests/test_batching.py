"""Many texts: batches sorted by length within a bound, results in input order, n-best lists, streaming, and
`tfm translate --input/--output` on a file of 10,000 lines (order, blank lines, bad lines, progress, no partial file)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tfm
from tfm import cli
from tfm.generation import batching
from tfm.apps import textfiles
from tfm.errors import InputError
from tfm.generation import greedy_search

ROOT = Path(__file__).resolve().parent.parent
# held-out dates of 12 to 15 characters (13 to 16 tokens with eos): one source bucket, and four rows to a batch of
# 64 tokens, so that every batch below runs one compiled shape
TEXTS = [s for s, _ in tfm.get_task("dates").examples(200, "test", seed=5) if 12 <= len(s) <= 15][:10]


@pytest.fixture(scope="module")
def translator():
  return tfm.Translator.bundled(device="CPU")


@pytest.fixture(scope="module")
def alone(translator):
  """Each text translated on its own, and its score."""
  found = [translator.translate([t], return_scores=True) for t in TEXTS]
  return [f[0][0] for f in found], [f[1][0] for f in found]


def test_plan_sorts_by_length_and_keeps_each_batch_within_its_bound():
  lengths = [5, 3, 9, 3, 7, 1, 9]
  assert batching.plan(lengths, 3, "examples") == [[5, 1, 3], [0, 4, 2], [6]]   # stable: equal lengths keep their order
  batches = batching.plan(lengths, 20, "tokens")
  assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
  assert all(len(b) * max(lengths[i] for i in b) <= 20 for b in batches)
  assert batching.plan([30, 2], 20, "tokens") == [[1], [0]]   # longer than the bound: a batch of its own
  assert [batching.padded_rows(n, 32) for n in (1, 3, 5, 17, 32)] == [1, 4, 8, 32, 32]
  assert batching.padded_rows(5, 6) == 6
  with pytest.raises(InputError, match="batch_type='words' is not one of examples, tokens"): batching.plan([1], 4, "words")
  with pytest.raises(InputError, match="max_batch_size=0 must be a positive integer"): batching.plan([1], 0)


@pytest.mark.parametrize("bound, batch_type", [(4, "examples"), (64, "tokens")])
def test_a_long_list_is_batched_and_comes_back_in_input_order(translator, alone, bound, batch_type):
  assert len(set(map(len, TEXTS))) > 2   # lengths differ: the batches are sorted
  got, scores = translator.translate(TEXTS, max_batch_size=bound, batch_type=batch_type, return_scores=True)
  assert got == alone[0]
  np.testing.assert_allclose(scores, alone[1], rtol=1e-5)


def test_n_best_lists_each_texts_hypotheses_best_first(translator):
  (texts,), (scores,) = translator.translate(["July 4, 1976"], beam_size=3, num_hypotheses=3, return_scores=True)
  best, best_scores = translator.translate(["July 4, 1976"], beam_size=3, return_scores=True)
  assert len(texts) == len(set(texts)) == 3 and texts[0] == best[0] == "1976-07-04"
  assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(best_scores[0])
  with pytest.raises(InputError, match="num_hypotheses=3 needs beam_size >= 3"): translator.translate(TEXTS[:1], num_hypotheses=3)


def test_streamed_tokens_are_greedy_searchs_columns(translator):
  ids = translator.tokenizer.encode(TEXTS[:4])
  src = np.zeros((4, max(map(len, ids))), np.int32)
  for i, row in enumerate(ids): src[i, :len(row)] = row
  steps = np.stack(list(tfm.generate_tokens(translator.model, src)), 1)
  np.testing.assert_array_equal(steps, greedy_search(translator.model, src))


def test_a_streamed_translation_is_the_greedy_one_piece_by_piece(translator, alone):
  pieces = list(translator.stream(TEXTS[0]))
  assert len(pieces) > 1 and "".join(pieces) == alone[0][0]


def test_return_attention_gives_each_translations_cross_attention(translator, alone):
  from tfm.apps.attention_map import cross_attention
  texts, attentions = translator.translate(TEXTS[:2], return_attention=True)
  assert texts == alone[0][:2]
  for text, weights in zip(TEXTS[:2], attentions):
    expected = cross_attention(translator, text).weights
    assert weights.shape == expected.shape and weights.shape[-1] == len(text) + 1   # source characters and eos
    np.testing.assert_allclose(weights, expected, atol=1e-6)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)


def test_problems_name_each_text_the_model_cannot_take(translator):
  found = translator.problems(["July 4, 1976", "July 4, 1976!", "1" * 60])
  assert sorted(found) == [1, 2]
  assert "character '!', which is not in the vocabulary" in found[1] and "more than the model's max_len=48" in found[2]


def test_read_lines_keeps_blank_lines_and_refuses_other_encodings(tmp_path):
  f = tmp_path / "in.txt"
  f.write_bytes("a\r\n\nb\n".encode())
  assert textfiles.read_lines(str(f)) == ["a", "", "b"]
  f.write_bytes("caf\xe9\n".encode("latin-1"))
  with pytest.raises(InputError, match="is not UTF-8 text .*iconv"): textfiles.read_lines(str(f))


# --- tfm translate on files ---

def dates(n: int, seed: int) -> list[tuple[str, str]]:
  """n held-out dates of one source-length bucket (9 to 15 characters), so the file compiles one batch shape."""
  pool = [p for p in tfm.get_task("dates").examples(4 * n, "test", seed=seed) if 9 <= len(p[0]) <= 15]
  return [pool[i % len(pool)] for i in range(n)]


def test_a_file_of_10000_lines_keeps_order_line_count_and_blank_lines(tmp_path, capsys, translator):
  pairs = dates(9990, seed=3)
  lines = [s for s, _ in pairs]
  for at in range(0, 9990, 999): lines.insert(at, "")   # 10 blank lines among them
  (tmp_path / "in.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  assert cli.main(["translate", "--device", "CPU", "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.txt"),
                   "--batch-size", "128", "--progress"]) == 0
  assert "translate: 100%" in capsys.readouterr().err
  out = (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n")
  assert out[-1] == "" and len(out) - 1 == len(lines) == 10000
  got = out[:-1]
  assert [i for i, line in enumerate(got) if not line] == [i for i, line in enumerate(lines) if not line]
  # each line's translation is its own (rows decode as if alone: test_generate), so a sample checks the order
  sample = [i for i in np.random.default_rng(0).choice(len(lines), 512, replace=False) if lines[i]]
  assert [got[i] for i in sample] == translator.translate([lines[i] for i in sample], max_batch_size=128)
  targets = dict(pairs)
  assert np.mean([g == targets[s] for g, s in zip(got, lines) if s]) > 0.99


def test_a_bad_line_stops_the_run_by_number_and_writes_nothing(tmp_path, capsys):
  (tmp_path / "in.txt").write_text("July 4, 1976\n\nJuly 4, 1976!\n", encoding="utf-8")
  (tmp_path / "out.txt").write_text("kept\n")
  args = ["translate", "--device", "CPU", "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.txt")]
  assert cli.main(args) == 2
  err = capsys.readouterr().err
  assert "1 line(s) cannot be translated: line 3:" in err and "character '!'" in err and "--skip-bad" in err
  assert (tmp_path / "out.txt").read_text() == "kept\n"
  assert cli.main(args + ["--skip-bad", "--json"]) == 0
  assert "line 3 skipped" in capsys.readouterr().err
  rows = [json.loads(line) for line in (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()]
  assert [r["line"] for r in rows] == [1, 2, 3]
  assert rows[0]["translation"] == "1976-07-04" and rows[0]["score"] < 0
  assert rows[1] == {"line": 2, "source": "", "translation": ""} and "character '!'" in rows[2]["error"]


def test_n_best_and_scores_on_the_command_line(capsys):
  assert cli.main(["translate", "--device", "CPU", "--beam-size", "3", "--n-best", "2", "--scores", "July 4, 1976"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2 and lines[0].endswith("\t1976-07-04")
  assert float(lines[0].split("\t")[0]) >= float(lines[1].split("\t")[0])


def test_stream_prints_the_translation(capsys):
  assert cli.main(["translate", "--device", "CPU", "--stream", "July 4, 1976"]) == 0
  assert capsys.readouterr().out == "1976-07-04\n"
  assert cli.main(["translate", "--stream", "--beam", "4", "July 4, 1976"]) == 2
  assert cli.main(["translate", "--device", "CPU"]) == 2
  assert "nothing to translate" in capsys.readouterr().err


def test_a_killed_run_leaves_the_output_file_as_it_was(tmp_path):
  lines = [s for s, _ in dates(10000, seed=4)]
  (tmp_path / "in.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  out = tmp_path / "out.txt"
  out.write_text("kept\n")
  proc = subprocess.Popen([sys.executable, "-m", "tfm.cli", "translate", "--device", "CPU", "--input", str(tmp_path / "in.txt"),
                           "--output", str(out), "--batch-size", "128", "--progress"], cwd=ROOT, stderr=subprocess.PIPE,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
  started = b""
  deadline = time.monotonic() + 300
  while b"translate:" not in started and time.monotonic() < deadline:
    started += os.read(proc.stderr.fileno(), 4096) or b""
    if proc.poll() is not None: break
  assert b"translate:" in started and proc.poll() is None, started.decode(errors="replace")
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  proc.stderr.close()
  assert out.read_text() == "kept\n" and sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt"]
