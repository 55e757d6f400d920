"""int8 weights: their error against the float64 oracle, and what it does to decoding, next to float32.

    python -m benchmarks int8 --backends CL --models bundled,opus

For each model, on each backend, the float32 and the int8 model (tfm.load(..., dtype="int8")) are given the same
inputs (`tfm compare`'s sources and teacher-forced targets for that model): the max abs error of their logits against
the float64 oracle of the float32 weights, that error over the logits' standard deviation, the fraction of positions
whose argmax is the oracle's, and greedy decoding's tokens against the float32 model's (the fraction equal, and of
rows equal throughout). For the bundled dates model also the exact-match rate on held-out dates. "opus" is the
translate benchmark's opus-mt-shaped model with random weights (made with transformers on first use): random weights
give flat, near-tied logits, where any perturbation flips some argmax, so its decoding agreement is a lower bound.
"""
from __future__ import annotations

import numpy as np

COLUMNS = ["model", "backend", "dtype", "max_abs_err", "err_over_std", "argmax_agree", "greedy_tokens_agree",
           "greedy_rows_agree", "exact_match"]
HELD_OUT = 500


def add_arguments(parser) -> None:
  parser.add_argument("--backends", default="CL", help="comma-separated tfm backends (default: CL)")
  parser.add_argument("--models", default="bundled,opus",
                      help="bundled, opus (the translate benchmark's opus-mt-shaped model), or paths (default: bundled,opus)")


def _subject(name: str):
  from tfm.apps import subjects
  if name == "opus":
    from benchmarks.translate_models import model_dir
    return subjects.load_subject(str(model_dir()))
  return subjects.load_subject(name)


def _exact_match(device: str, dtype: str | None) -> float:
  import tfm
  pairs = tfm.get_task("dates").examples(HELD_OUT, "test", seed=0)
  got = tfm.Translator.bundled(device=device, dtype=dtype).translate([s for s, _ in pairs])
  return float(np.mean([g == t for g, (_, t) in zip(got, pairs)]))


def _agreement(ids: np.ndarray, reference: np.ndarray, pad: int) -> tuple[float, float]:
  """(fraction of token positions equal, fraction of rows equal throughout), the shorter array padded with pad."""
  width = max(ids.shape[1], reference.shape[1])
  a, b = (np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=pad) for x in (ids, reference))
  return float((a == b).mean()), float((a == b).all(1).mean())


def run(args) -> list[dict]:
  import tfm
  from benchmarks.common import print_rows
  from tfm.apps import compare
  from tfm.io import weights
  rows = []
  for name in [m.strip() for m in args.models.split(",") if m.strip()]:
    subject = _subject(name)
    expected = compare.oracle(subject)["logits"]
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
      greedy = {}
      for dtype in ("float32", "int8"):
        model = weights.build(subject.config, subject.arrays, subject.name, backend, None if dtype == "float32" else dtype)
        logits = model(subject.src, subject.tgt).numpy().astype(np.float64)
        greedy[dtype] = tfm.generate(model, subject.src, max_len=subject.max_len)
        tokens, rows_equal = _agreement(greedy[dtype], greedy["float32"], subject.config.pad_id)
        rows.append({"bench": "int8", "model": name, "backend": backend, "dtype": dtype,
                     "max_abs_err": float(np.abs(logits - expected).max()),
                     "err_over_std": float(np.abs(logits - expected).max() / expected.std()),
                     "argmax_agree": float((logits.argmax(-1) == expected.argmax(-1)).mean()),
                     "greedy_tokens_agree": tokens, "greedy_rows_agree": rows_equal,
                     "exact_match": _exact_match(backend, None if dtype == "float32" else dtype) if name == "bundled" else None})
        print_rows(rows[-1:], COLUMNS, header=len(rows) == 1)
  return rows
