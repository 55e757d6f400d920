"""Translate at real size: a real translation model's shape with random weights (--shape: opus, an opus-mt-en-de-shaped
Marian model, the default; nllb, an NLLB-200-distilled-600M-shaped M2M100; benchmarks.translate_models), decoded by
tfm on each backend and, on the same weights, by transformers (PyTorch) and CTranslate2 (float32 and int8) when they
are installed (`pip install -e .[bench]`).

    python -m benchmarks translate --backends CL,CPU --modes greedy1,greedy8,beam4x1,beam4x8
    python -m benchmarks translate --shape nllb --backends CPU --modes greedy1,beam4x8

Every system decodes the same 24-token sources (the last one eos) for exactly 32 tokens (eos held back until then,
as min = max length does in each), so they do the same work. At the nllb shape every system forces the target
language (eng_Latn) as the first of the 32, as NLLB is used: tfm with forced_bos_id, transformers with
forced_bos_token_id, CTranslate2 with target_prefix (its output starts with the prefix); a worker whose outputs do
not start with it fails. The ids of each system are compared with the first system's (tfm on the first backend) from
the first token on: all 32 at the nllb shape, the first 31 at the opus shape, whose checkpoint's forced_eos_token_id
makes tfm and transformers end on eos at the 32nd, which CTranslate2 does not apply. Each system runs in its own
fresh process, which reports its load time, first call (compiling, for tfm), the median of the timed calls and its
peak memory. The model folder is made once (transformers, random weights, seed 0, save_pretrained) in tfm's cache
folder, bench/opus-shaped or bench/nllb-shaped, and reused, as is its CTranslate2 conversion (bench/<name>-ct2).
The nllb folder takes 2.5 GB on disk and its conversion as much again; a worker peaks at up to twice that in memory.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from benchmarks.common import load_average, print_rows
from benchmarks.translate_models import SHAPES, ct2_dir, model_dir

SRC_LEN, NEW_TOKENS = 24, 32
MODES = {"greedy1": (1, 1), "greedy8": (1, 8), "beam4x1": (4, 1), "beam4x8": (4, 8)}   # name -> (beam, batch)
COLUMNS = ["system", "backend", "mode", "load_s", "first_s", "median_ms", "ms_per_token", "tokens_per_s", "vs_torch",
           "vs_ct2", "same_ids", "peak_mb", "load"]


def add_arguments(parser) -> None:
  parser.add_argument("--shape", default="opus", choices=sorted(SHAPES),
                      help="the model's shape: opus (opus-mt-en-de, the default) or nllb (NLLB-200-distilled-600M)")
  parser.add_argument("--backends", default="CL,CPU", help="comma-separated tfm backends (default: CL,CPU)")
  parser.add_argument("--modes", default=",".join(MODES), help=f"decodes to time, of {', '.join(MODES)} (default: all)")
  parser.add_argument("--reps", type=int, default=3, help="timed calls after the first; the median is reported (default: 3)")
  parser.add_argument("--systems", default="tfm,tfm-int8,torch,ct2,ct2-int8",
                      help="which systems to run (default: all installed; tfm-int8 is tfm with int8 Linear weights)")


# --- the workers, each in a fresh process: a JSON line per mode ---------------------------------------------------

WORKER = textwrap.dedent("""
  import json, statistics, sys, time
  from benchmarks.translate import MODES, NEW_TOKENS, SRC_LEN, peak_mb
  from benchmarks.translate_models import SHAPES, sources
  system, backend, name, modes, reps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(","), int(sys.argv[5])
  shape = SHAPES[name]
  t0 = time.perf_counter()
  from benchmarks.translate import load_system
  decode = load_system(system, backend, name)
  load_s = time.perf_counter() - t0
  for mode in modes:
    beam, batch = MODES[mode]
    src = sources(shape, batch, SRC_LEN)
    t0 = time.perf_counter(); ids = decode(src, beam); first = time.perf_counter() - t0
    if shape.forced_bos is not None and any(row[:1] != [shape.forced_bos] for row in ids):
      sys.exit(f"{system} did not start its {mode} outputs with the forced token {shape.forced_bos}: {[r[:3] for r in ids]}")
    times = []
    for _ in range(reps):
      t0 = time.perf_counter(); decode(src, beam); times.append(time.perf_counter() - t0)
    print("ROW " + json.dumps({"mode": mode, "load_s": load_s, "first_s": first, "median_s": statistics.median(times),
                               "ids": ids, "peak_mb": peak_mb()}), flush=True)
""")


def peak_mb() -> float:
  with open("/proc/self/status", encoding="utf-8") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def load_system(system: str, backend: str, name: str):
  """decode(src ids, beam) -> generated ids per row (NEW_TOKENS each, the forced first token included), for one
  system on the checkpoint of SHAPES[name]."""
  shape, folder = SHAPES[name], str(model_dir(name))
  if system in ("tfm", "tfm-int8"):
    import tfm
    model = tfm.from_pretrained(folder, device=backend, dtype="int8" if system == "tfm-int8" else None)
    def decode(src, beam):
      out = tfm.generate(model, np.array(src), beam_size=beam, max_len=NEW_TOKENS, min_len=NEW_TOKENS, early_stopping=True,
                         length_penalty=1.0, forced_bos_id=shape.forced_bos)
      return out.tolist()
    return decode
  if system == "torch":
    import torch
    import transformers
    torch.set_num_threads(os.cpu_count() or 1)
    model = getattr(transformers, shape.model_class).from_pretrained(folder).eval()
    def decode(src, beam):
      with torch.inference_mode():
        out = model.generate(torch.tensor(src), attention_mask=torch.ones(len(src), len(src[0]), dtype=torch.long),
                             num_beams=beam, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             early_stopping=True, length_penalty=1.0, bad_words_ids=shape.bad_words,
                             forced_bos_token_id=shape.forced_bos)
      return out[:, 1:].tolist()   # the decoder's start token is not an output
    return decode
  import ctranslate2
  translator = ctranslate2.Translator(str(ct2_dir(name)), device="cpu", compute_type="int8" if system == "ct2-int8" else "float32",
                                      intra_threads=os.cpu_count() or 1)
  ids = shape.token_ids()
  # CTranslate2 takes the source's eos as given (these conversions do not add one), and a forced first token as the
  # target prefix, which its output repeats and max/min_decoding_length count, as the others count the forced token
  prefix = None if shape.forced_bos is None else [shape.token(shape.forced_bos)]
  def decode(src, beam):
    targets = None if prefix is None else [prefix] * len(src)
    out = translator.translate_batch([[shape.token(i) for i in row] for row in src], target_prefix=targets, beam_size=beam,
                                     max_decoding_length=NEW_TOKENS, min_decoding_length=NEW_TOKENS, length_penalty=1.0)
    return [[ids[t] for t in r.hypotheses[0]] for r in out]
  return decode


# --- the parent ---------------------------------------------------------------------------------------------------

def _worker(system: str, backend: str, shape: str, modes: list[str], reps: int) -> list[dict]:
  root = Path(__file__).resolve().parents[1]
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
  proc = subprocess.run([sys.executable, "-c", WORKER, system, backend, shape, ",".join(modes), str(reps)],
                        capture_output=True, text=True, env=env, cwd=root, timeout=3600)
  if proc.returncode != 0:
    print(f"{system} on {backend} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return []
  return [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")]


def _agreement(ids: np.ndarray, reference: np.ndarray) -> float:
  """The fraction of token positions where ids equal the reference's (0 when their shapes differ)."""
  return float((ids == reference).mean()) if ids.shape == reference.shape else 0.0


def _installed(module: str) -> bool:
  from importlib.util import find_spec
  return find_spec(module) is not None


def run(args) -> list[dict]:
  modes = [m.strip() for m in args.modes.split(",") if m.strip()]
  unknown = [m for m in modes if m not in MODES]
  if unknown: raise SystemExit(f"unknown --modes {', '.join(unknown)}; choose from {', '.join(MODES)}")
  wanted = [s.strip() for s in args.systems.split(",")]
  if not (_installed("torch") and _installed("transformers")):
    raise SystemExit(f"the {args.shape}-shaped model is made with transformers: pip install -e .[bench]")
  shape = SHAPES[args.shape]
  model_dir(args.shape)   # made here once, not in each worker
  backends = [b.strip() for b in args.backends.split(",") if b.strip()]
  runs = [(system, b) for system in ("tfm", "tfm-int8") if system in wanted for b in backends]
  if "torch" in wanted: runs.append(("torch", "PyTorch CPU"))
  for s in ("ct2", "ct2-int8"):
    if s in wanted and _installed("ctranslate2"): runs.append((s, "CPU"))
  rows, reference_ids = [], {}
  for system, backend in runs:
    load = load_average()
    for r in _worker(system, backend, args.shape, modes, args.reps):
      beam, batch = MODES[r["mode"]]
      ids = np.array([row[:shape.compared] for row in r.pop("ids")])   # opus: the 32nd is the forced eos, or not (module doc)
      reference_ids.setdefault(r["mode"], ids)
      rows.append({"bench": "translate", "shape": args.shape, "system": system, "backend": backend, "mode": r["mode"], "load_s": r["load_s"],
                   "first_s": r["first_s"], "median_ms": r["median_s"] * 1e3, "ms_per_token": r["median_s"] * 1e3 / NEW_TOKENS,
                   "tokens_per_s": batch * NEW_TOKENS / r["median_s"], "same_ids": _agreement(ids, reference_ids[r["mode"]]),
                   "peak_mb": r["peak_mb"], "load": load})
      print_rows(rows[-1:], COLUMNS, header=len(rows) == 1)
  for row in rows:   # ratios of time: below 1 is faster than the anchor
    for anchor, column in (("torch", "vs_torch"), ("ct2", "vs_ct2")):
      base = next((r for r in rows if r["system"] == anchor and r["mode"] == row["mode"]), None)
      row[column] = row["median_ms"] / base["median_ms"] if base else None
  print("\nvs_torch, vs_ct2: median time / the anchor's median time for the same decode (below 1 is faster); "
        "same_ids: the fraction of tokens equal to the first system's")
  print_rows(rows, COLUMNS)
  return rows
