"""Start-up: wall time of a fresh process that loads a model and translates one text, with cold and warm caches.

Cases: `tfm translate` (the bundled model), `Translator.bundled().translate`, and the committed Marian fixture
(tests/fixtures/marian_tiny) through `Translator.load`, each in a new Python process; beside them, when torch and
transformers are installed, a fresh process that runs `MarianMTModel.from_pretrained(...).generate` on that folder.
"cold": empty caches, tfm's (TFM_CACHE_DIR) and tinygrad's (CACHEDB), as on the first run on a machine; "warm": the
same command again, the caches filled by the cold run (the median of --reps runs).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import load_average, print_rows

ROOT = Path(__file__).resolve().parents[1]
MARIAN = ROOT / "tests" / "fixtures" / "marian_tiny"
TEXT = "3rd of March, 2021"
TFM_CASES = {
  "tfm translate (bundled)": lambda device: [sys.executable, "-m", "tfm.cli", "translate", "--device", device, TEXT],
  "Translator.bundled().translate": lambda device: [sys.executable, "-c",
    f"import tfm; print(tfm.Translator.bundled(device={device!r}).translate([{TEXT!r}]))"],
  "Translator.load(marian_tiny).translate": lambda device: [sys.executable, "-c",
    f"import tfm; print(tfm.Translator.load({str(MARIAN)!r}, device={device!r}).translate(['Hello world'], max_len=16))"],
}
TRANSFORMERS = [sys.executable, "-c", "\n".join([
  "from transformers import MarianMTModel, MarianTokenizer",
  f"tok = MarianTokenizer.from_pretrained({str(MARIAN)!r}); model = MarianMTModel.from_pretrained({str(MARIAN)!r})",
  "out = model.generate(**tok(['Hello world'], return_tensors='pt'), max_new_tokens=16)",
  "print(tok.batch_decode(out, skip_special_tokens=True))"])]


def add_arguments(parser) -> None:
  parser.add_argument("--backends", default="auto", help="comma-separated devices for tfm (default: auto)")
  parser.add_argument("--reps", type=int, default=3, help="warm runs per case; the median is reported (default: 3)")


def _wall(command: list[str], env: dict) -> float:
  start = time.perf_counter()
  proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT, timeout=900)
  wall = time.perf_counter() - start
  if proc.returncode != 0: raise SystemExit(f"{' '.join(command[:4])} failed:\n{proc.stderr[-2000:]}")
  return wall


def _has(module: str) -> bool:
  from importlib.util import find_spec
  return find_spec(module) is not None


def run(args) -> list[dict]:
  rows = []
  for device in args.backends.split(","):
    for case, command in TFM_CASES.items():
      with tempfile.TemporaryDirectory(prefix="tfm-startup-") as tmp:
        env = {**os.environ, "TFM_CACHE_DIR": os.path.join(tmp, "tfm"), "CACHEDB": os.path.join(tmp, "tinygrad.db")}
        env.pop("TFM_CACHE", None)
        cold = _wall(command(device), env)
        warm = [_wall(command(device), env) for _ in range(args.reps)]
      rows.append({"bench": "startup", "case": case, "backend": device, "cold_s": cold, "warm_s": statistics.median(warm),
                   "load": load_average()})
      print(f"{case} on {device}: {cold:.2f} s cold, {statistics.median(warm):.2f} s warm", flush=True)
  if _has("torch") and _has("transformers"):
    first = _wall(TRANSFORMERS, dict(os.environ))
    warm = [_wall(TRANSFORMERS, dict(os.environ)) for _ in range(args.reps)]
    rows.append({"bench": "startup", "case": "transformers MarianMTModel (marian_tiny)", "backend": "PyTorch CPU",
                 "cold_s": first, "warm_s": statistics.median(warm), "load": load_average()})
  else: print("torch and transformers not installed (pip install -e .[hf]): the transformers row is left out")
  print_rows(rows, ["case", "backend", "cold_s", "warm_s", "load"])
  return rows
