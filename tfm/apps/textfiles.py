"""Translating a file of texts, one per line, as `tfm translate --input FILE --output FILE` does: lines read as UTF-8,
blank lines kept blank, bad lines reported by number (stopping the run, or skipped), the translations batched by
length (tfm.generation.batching) with a progress bar, and written out in the input's order, whole or not at all.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import IO

from tinygrad.helpers import tqdm

from tfm.errors import InputError
from tfm.files import atomic_write
from tfm.apps.translator import Translator

BLOCK = 1024   # lines translated per call: a progress step, and the span over which lines are sorted by length
SHOWN_PROBLEMS = 5


def read_lines(path: str) -> list[str]:
  """The lines of a UTF-8 text file ("-": standard input), without their line ends (\\n or \\r\\n)."""
  try:
    if path == "-": text = sys.stdin.buffer.read().decode("utf-8")
    else:
      with open(path, "rb") as f: text = f.read().decode("utf-8")
  except UnicodeDecodeError as e:
    raise InputError(f"{'standard input' if path == '-' else path} is not UTF-8 text (byte {e.start} cannot be decoded); "
                     f"convert it, e.g. `iconv -f LATIN1 -t UTF-8`") from None
  lines = text.split("\n")
  if lines[-1] == "": lines.pop()   # the last line's end, not an empty line after it
  return [line.removesuffix("\r") for line in lines]


@dataclass
class Result:
  """A line's outcome: its translations (best first) and their scores, or why it was skipped."""
  source: str
  translations: list[str] = field(default_factory=list)
  scores: list[float] = field(default_factory=list)
  error: str | None = None


def line_problems(translator: Translator, lines: list[str]) -> dict[int, str]:
  """Why each non-blank line the model cannot take cannot be, by index into `lines`."""
  todo = [i for i, line in enumerate(lines) if line.strip()]
  return {todo[j]: why for j, why in translator.problems([lines[i] for i in todo]).items()}


def refuse(problems: dict[int, str]) -> None:
  """The InputError that names the first few lines (by index, shown from 1) the model cannot take; none if none."""
  if not problems: return
  shown = "; ".join(f"line {i + 1}: {why}" for i, why in sorted(problems.items())[:SHOWN_PROBLEMS])
  more = f" (and {len(problems) - SHOWN_PROBLEMS} more)" if len(problems) > SHOWN_PROBLEMS else ""
  raise InputError(f"{len(problems)} line(s) cannot be translated: {shown}{more}; fix or remove them, or pass --skip-bad "
                   f"to skip them")


def translate_lines(translator: Translator, lines: list[str], skip_bad: bool = False, progress: bool | None = None,
                    prefix: str | None = None, **options) -> list[Result]:
  """Each line's Result, in order. A line the model cannot take raises InputError naming it (the first few of them),
  unless skip_bad: then it is skipped with its reason. Blank lines give no translation. prefix: the start every
  translation is forced to. `options` go to Translator.translate (beam_size, max_len, num_hypotheses, max_batch_size,
  batch_type, and the decoding rules); options left None are left out."""
  options = {k: v for k, v in options.items() if v is not None}
  if prefix is not None:
    try: translator.prefix_ids(prefix, 0)
    except InputError as e: raise InputError(f"--prefix {prefix!r}: {str(e).removeprefix('target_prefix[0]: ')}") from None
  results = [Result(line) for line in lines]
  todo = [i for i, line in enumerate(lines) if line.strip()]
  problems = line_problems(translator, lines)
  if not skip_bad: refuse(problems)
  for i, why in problems.items(): results[i].error = why
  todo = [i for i in todo if i not in problems]
  n = options.get("num_hypotheses", 1)
  bar = tqdm(total=len(todo), desc="translate", unit="lines", disable=not progress if progress is not None else None)
  for start in range(0, len(todo), BLOCK):
    block = todo[start:start + BLOCK]
    starts = None if prefix is None else [prefix] * len(block)
    texts, scores = translator.translate([lines[i] for i in block], return_scores=True, target_prefix=starts, **options)
    for i, found, score in zip(block, texts, scores):
      results[i].translations, results[i].scores = (found, score) if n > 1 else ([found], [score])
    bar.update(len(block), close=start + BLOCK >= len(todo))
  return results


def format_result(result: Result, line: int, as_json: bool, with_scores: bool, n_best: int = 1) -> str:
  """The output for one input line: one JSON object, or one text line per translation (blank for a blank or skipped
  line), with its score before it when asked."""
  if as_json:
    obj: dict = {"line": line, "source": result.source}
    if result.error is not None: obj["error"] = result.error
    elif result.translations:
      obj.update(translation=result.translations[0], score=result.scores[0])
      if len(result.translations) > 1: obj["n_best"] = [{"translation": t, "score": s} for t, s in zip(result.translations, result.scores)]
    else: obj["translation"] = ""
    return json.dumps(obj, ensure_ascii=False)
  if not result.translations: return "\n".join([""] * n_best)   # a blank or skipped line: as many lines as the others
  return "\n".join(f"{s:.4f}\t{t}" if with_scores else t for t, s in zip(result.translations, result.scores))


def write_results(results: list[Result], path: str | None, as_json: bool = False, with_scores: bool = False,
                  n_best: int = 1) -> None:
  """All results, in order, to path (atomically: the file appears whole or not at all) or to standard output."""
  text = "".join(format_result(r, i + 1, as_json, with_scores, n_best) + "\n" for i, r in enumerate(results))
  if path is None or path == "-":
    sys.stdout.write(text)
    return
  def write(tmp: str) -> None:
    with open(tmp, "w", encoding="utf-8", newline="\n") as f: f.write(text)
  atomic_write(os.path.abspath(path), write)


def report_skipped(results: list[Result], err: IO[str]) -> None:
  for i, r in enumerate(results):
    if r.error is not None: print(f"tfm translate: line {i + 1} skipped: {r.error}", file=err)
