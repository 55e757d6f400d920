"""Translate at real size: an opus-mt-en-de-shaped Marian model (d_model 512, 6+6 layers, 8 heads, FFN 2048, shared
vocabulary 58,101) with random weights, decoded by tfm on each backend and, on the same weights, by transformers
(PyTorch) and CTranslate2 (float32 and int8) when they are installed (`pip install -e .[bench]`).

    python -m benchmarks translate --backends CL,CPU --modes greedy1,greedy8,beam4x1,beam4x8

Every system decodes the same 24-token sources for exactly 32 tokens (eos held back until then, as min = max length
does in each), so they do the same work; the ids of each are compared with the first system's (tfm on the first
backend) over the first 31 tokens: the checkpoint's forced_eos_token_id makes tfm and transformers end on eos at the
32nd, which CTranslate2 does not apply. Each system
runs in its own fresh process, which reports its load time, first call (compiling, for tfm), the median of the
timed calls and its peak memory. The model folder is made once (transformers' MarianMTModel with random weights, seed
0, saved with save_pretrained) in tfm's cache folder, bench/opus-shaped, and reused.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from backends.machine import cache_dir
from benchmarks.common import load_average, print_rows

OPUS = dict(vocab_size=58101, d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
            decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_position_embeddings=512,
            pad_token_id=58100, eos_token_id=0, decoder_start_token_id=58100, activation_function="swish",
            scale_embedding=True, share_encoder_decoder_embeddings=True)
SRC_LEN, NEW_TOKENS = 24, 32
MODES = {"greedy1": (1, 1), "greedy8": (1, 8), "beam4x1": (4, 1), "beam4x8": (4, 8)}   # name -> (beam, batch)
COLUMNS = ["system", "backend", "mode", "load_s", "first_s", "median_ms", "ms_per_token", "tokens_per_s", "vs_torch",
           "vs_ct2", "same_ids", "peak_mb", "load"]


def add_arguments(parser) -> None:
  parser.add_argument("--backends", default="CL,CPU", help="comma-separated tfm backends (default: CL,CPU)")
  parser.add_argument("--modes", default=",".join(MODES), help=f"decodes to time, of {', '.join(MODES)} (default: all)")
  parser.add_argument("--reps", type=int, default=3, help="timed calls after the first; the median is reported (default: 3)")
  parser.add_argument("--systems", default="tfm,tfm-int8,torch,ct2,ct2-int8",
                      help="which systems to run (default: all installed; tfm-int8 is tfm with int8 Linear weights)")


def model_dir() -> Path:
  """The opus-shaped checkpoint folder, made on first use."""
  folder = cache_dir() / "bench" / "opus-shaped"
  if not (folder / "model.safetensors").exists():
    import torch
    from transformers import MarianConfig, MarianMTModel
    torch.manual_seed(0)
    model = MarianMTModel(MarianConfig(**OPUS, bad_words_ids=[[OPUS["pad_token_id"]]]))
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    os.replace(tmp, folder)
  return folder


def sources(batch: int) -> list[list[int]]:
  import numpy as np
  rng = np.random.default_rng(0)
  ids = rng.integers(3, OPUS["vocab_size"] - 1, (batch, SRC_LEN - 1))
  return [row + [OPUS["eos_token_id"]] for row in ids.tolist()]


# --- the workers, each in a fresh process: a JSON line per mode ---------------------------------------------------

WORKER = textwrap.dedent("""
  import json, statistics, sys, time
  from benchmarks.translate import MODES, NEW_TOKENS, peak_mb, sources
  system, backend, folder, modes, reps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(","), int(sys.argv[5])
  t0 = time.perf_counter()
  from benchmarks.translate import load_system
  decode = load_system(system, backend, folder)
  load_s = time.perf_counter() - t0
  for mode in modes:
    beam, batch = MODES[mode]
    src = sources(batch)
    t0 = time.perf_counter(); ids = decode(src, beam); first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
      t0 = time.perf_counter(); decode(src, beam); times.append(time.perf_counter() - t0)
    print("ROW " + json.dumps({"mode": mode, "load_s": load_s, "first_s": first, "median_s": statistics.median(times),
                               "ids": ids, "peak_mb": peak_mb()}), flush=True)
""")


def peak_mb() -> float:
  with open("/proc/self/status", encoding="utf-8") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def load_system(system: str, backend: str, folder: str):
  """decode(src ids, beam) -> generated ids per row (NEW_TOKENS each), for one system on the checkpoint folder."""
  pad, eos = OPUS["pad_token_id"], OPUS["eos_token_id"]
  if system in ("tfm", "tfm-int8"):
    import numpy as np

    import tfm
    model = tfm.from_pretrained(folder, device=backend, dtype="int8" if system == "tfm-int8" else None)
    def decode(src, beam):
      out = tfm.generate(model, np.array(src), beam_size=beam, max_len=NEW_TOKENS, min_len=NEW_TOKENS, early_stopping=True,
                         length_penalty=1.0)
      return out.tolist()
    return decode
  if system == "torch":
    import torch
    from transformers import MarianMTModel
    torch.set_num_threads(os.cpu_count() or 1)
    model = MarianMTModel.from_pretrained(folder).eval()
    def decode(src, beam):
      with torch.inference_mode():
        out = model.generate(torch.tensor(src), attention_mask=torch.ones(len(src), len(src[0]), dtype=torch.long),
                             num_beams=beam, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             early_stopping=True, length_penalty=1.0, bad_words_ids=[[pad]])
      return out[:, 1:].tolist()
    return decode
  import ctranslate2
  ct2 = Path(folder).with_name("opus-shaped-ct2")
  if not (ct2 / "model.bin").exists(): _convert(folder, ct2)
  translator = ctranslate2.Translator(str(ct2), device="cpu", compute_type="int8" if system == "ct2-int8" else "float32",
                                      intra_threads=os.cpu_count() or 1)
  def decode(src, beam):
    tokens = [[str(i) for i in row[:-1]] + ["</s>"] for row in src]   # the source's eos: the conversion does not add one
    out = translator.translate_batch(tokens, beam_size=beam, max_decoding_length=NEW_TOKENS, min_decoding_length=NEW_TOKENS,
                                     length_penalty=1.0)
    return [[int(t) if t.isdigit() else eos for t in r.hypotheses[0]] for r in out]
  return decode


class _Vocabulary:
  """What CTranslate2's Marian converter reads of a tokenizer: the vocabulary (token i is the string "i", with
  Marian's </s>, <unk> and trailing <pad>), and the special tokens."""
  eos_token, unk_token = "</s>", "<unk>"

  def get_vocab(self) -> dict[str, int]:
    names = {OPUS["eos_token_id"]: "</s>", 1: "<unk>", OPUS["pad_token_id"]: "<pad>"}
    return {names.get(i, str(i)): i for i in range(OPUS["vocab_size"])}


def _convert(folder: str, out: Path) -> None:
  from ctranslate2.converters import TransformersConverter
  class Converter(TransformersConverter):
    def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs): return _Vocabulary()
  Converter(folder).convert(str(out), quantization=None, force=True)


# --- the parent ---------------------------------------------------------------------------------------------------

def _worker(system: str, backend: str, folder: Path, modes: list[str], reps: int) -> list[dict]:
  root = Path(__file__).resolve().parents[1]
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
  proc = subprocess.run([sys.executable, "-c", WORKER, system, backend, str(folder), ",".join(modes), str(reps)],
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
    raise SystemExit("the opus-shaped model is made with transformers: pip install -e .[bench]")
  folder = model_dir()
  backends = [b.strip() for b in args.backends.split(",") if b.strip()]
  runs = [(system, b) for system in ("tfm", "tfm-int8") if system in wanted for b in backends]
  if "torch" in wanted: runs.append(("torch", "PyTorch CPU"))
  for s in ("ct2", "ct2-int8"):
    if s in wanted and _installed("ctranslate2"): runs.append((s, "CPU"))
  rows, reference_ids = [], {}
  for system, backend in runs:
    load = load_average()
    for r in _worker(system, backend, folder, modes, args.reps):
      beam, batch = MODES[r["mode"]]
      ids = np.array([row[:NEW_TOKENS - 1] for row in r.pop("ids")])   # the 32nd is the forced eos, or not (module doc)
      reference_ids.setdefault(r["mode"], ids)
      rows.append({"bench": "translate", "system": system, "backend": backend, "mode": r["mode"], "load_s": r["load_s"],
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
