"""Whisper at whisper-base's shape: 30 s of audio encoded and 100 tokens decoded, by tfm on each backend and, on the
same random weights, by transformers (PyTorch), CTranslate2 and faster-whisper when they are installed.

    python -m benchmarks whisper --backends CPU --modes greedy,beam5

The checkpoint is a WhisperForConditionalGeneration of whisper-base's shape (d_model 512, 6+6 layers, 8 heads, FFN
2048, 80 mels, vocabulary 51,865, 1500 source and 448 target positions; eot 50257, sot 50258) with random weights
(seed 0) and an output layer of its own (whisper-base ties it to the embedding: the same work, but with tied random
weights each step's argmax is its input token, so the 100 ids would be one token repeated). It is made once with
transformers in tfm's cache folder (bench/whisper-base-shaped) and converted once for CTranslate2
(bench/whisper-base-shaped-ct2), which also gets a tokenizer.json for faster-whisper: the id strings with Whisper's
special tokens at their ids (WHISPER.token). Its generation_config carries whisper-base's language and task ids but
suppresses no tokens (whisper-base suppresses ~90 punctuation ids); every system is given the same rule instead,
SUPPRESSED: no eot (so exactly 100 tokens), no special or timestamp token (whose rules differ between them).

Every system decodes the same input, the log-mel features (tfm.io.audio.log_mel) of a synthetic 30 s signal (audio()),
after the prompt [sot, en, transcribe, notimestamps], for exactly 100 tokens, greedy (--modes beam5: beam 5):
  tfm             tfm.generation.whisper.whisper_generate(language="en", task="transcribe", max_len=100), SUPPRESSED
                  set as the model's generation_config suppress_tokens
  torch           WhisperForConditionalGeneration.generate(language="en", task="transcribe", max_new_tokens=100),
                  SUPPRESSED as a logits processor adding one -inf row (its suppress_tokens' isin took ~70 ms a step)
  ct2             ctranslate2.models.Whisper.generate(prompts=[PROMPT], suppress_tokens=SUPPRESSED, max_length=200):
                  CTranslate2 4.8.5's Whisper stops after max_length / 2 new tokens (measured: 20 -> 10, 104 -> 52,
                  200 -> 100)
  faster-whisper  WhisperModel(the conversion).transcribe(the audio, language="en", max_new_tokens=198 (CTranslate2's
                  max_length / 2 again; 196 gave 99 tokens), suppress_tokens=SUPPRESSED, one temperature, no VAD): it computes its own log-mel
                  features from the audio (so its ids differ), and its segment loop and text decoding are timed too
tfm on CPU, PyTorch and CTranslate2 are timed on 2 cores and on 1 (tfm: TFM_CORES=0; the others: 1 thread): on a
loaded machine two threads that wait on each other can take longer than one; ratios are to the anchor's faster row.
Each runs in its own fresh process and reports its load time, its first call (compiling, for tfm), the median of the
timed calls of the encoder alone (not for faster-whisper) and of the whole call (encoder + 100-token decode), ms per
decoded token ((whole - encoder) / 100) and its peak memory; ids are compared with the first system's.
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
from benchmarks.translate import _agreement, _installed
from benchmarks.translate_models import Shape, ct2_dir, model_dir

EOT, SOT, EN, TRANSLATE, TRANSCRIBE, NO_TIMESTAMPS, FIRST_TIMESTAMP = 50257, 50258, 50259, 50358, 50359, 50363, 50364
PROMPT = [SOT, EN, TRANSCRIBE, NO_TIMESTAMPS]
NEW_TOKENS, SECONDS, RATE = 100, 30, 16000
SUPPRESSED = list(range(EOT, 51865))   # every system: no eot before the 100th token, no special or timestamp token
# whisper-base's 99 languages in token order: <|en|> is 50259, <|su|> 50357
LANGUAGES = ("en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt la mi ml "
             "cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc ka be tg sd gu am yi "
             "lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su").split()
SPECIALS = {EOT: "<|endoftext|>", SOT: "<|startoftranscript|>", **{EN + i: f"<|{code}|>" for i, code in enumerate(LANGUAGES)},
            TRANSLATE: "<|translate|>", TRANSCRIBE: "<|transcribe|>", 50360: "<|startoflm|>", 50361: "<|startofprev|>",
            50362: "<|nocaptions|>", NO_TIMESTAMPS: "<|notimestamps|>",
            **{FIRST_TIMESTAMP + i: f"<|{i * 0.02:.2f}|>" for i in range(1501)}}
WHISPER = Shape("whisper-base-shaped", "WhisperForConditionalGeneration", "WhisperConfig",
                dict(vocab_size=51865, num_mel_bins=80, d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                     decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_source_positions=1500,
                     max_target_positions=448, pad_token_id=EOT, bos_token_id=EOT, eos_token_id=EOT, decoder_start_token_id=SOT,
                     suppress_tokens=[], begin_suppress_tokens=[], tie_word_embeddings=False),
                SPECIALS, first_word=0, compared=NEW_TOKENS,
                generation=dict(lang_to_id={f"<|{code}|>": EN + i for i, code in enumerate(LANGUAGES)},
                                task_to_id={"translate": TRANSLATE, "transcribe": TRANSCRIBE}, no_timestamps_token_id=NO_TIMESTAMPS,
                                prev_sot_token_id=50361, is_multilingual=True, max_initial_timestamp_index=50, return_timestamps=False,
                                suppress_tokens=[], begin_suppress_tokens=[], max_length=448,
                                _from_model_config=False))   # else transformers' generate rebuilds it from config.json
MODES = {"greedy": 1, "beam5": 5}   # name -> beam size
COLUMNS = ["system", "backend", "mode", "load_s", "enc_first_s", "enc_ms", "first_s", "median_ms", "ms_per_token", "vs_torch",
           "vs_ct2", "same_ids", "peak_mb", "load"]


def add_arguments(parser) -> None:
  parser.add_argument("--backends", default="CPU", help="comma-separated tfm backends (default: CPU)")
  parser.add_argument("--modes", default="greedy", help=f"decodes to time, of {', '.join(MODES)} (default: greedy)")
  parser.add_argument("--reps", type=int, default=3, help="timed calls after the first; the median is reported (default: 3)")
  parser.add_argument("--systems", default="tfm,torch,ct2,faster-whisper", help="which systems to run (default: all installed)")
  parser.add_argument("--threads", type=int, default=2,
                      help="CTranslate2's and PyTorch's threads (default: 2); PyTorch is timed with 1 thread too")


def audio() -> np.ndarray:
  """The 30 s input, the same in every worker: a gliding tone with harmonics, a tremolo and a little noise (seed 0)."""
  t = np.arange(SECONDS * RATE) / RATE
  phase = 2 * np.pi * (220 * t + 40 * t ** 2 / SECONDS)
  tone = sum(np.sin(k * phase) / k for k in (1, 2, 3, 5)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
  return (0.1 * tone + 0.01 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)


def features() -> np.ndarray:
  """The log-mel features of `audio()`, (1, 80, 3000) float32."""
  from tfm.io.audio import log_mel
  return log_mel(audio())[None].astype(np.float32)


def faster_whisper_dir() -> Path:
  """The CTranslate2 conversion with the tokenizer.json that faster-whisper reads (else it downloads one): a word-level
  vocabulary of WHISPER's token strings, its special tokens marked special."""
  out = ct2_dir(WHISPER)
  if not (out / "tokenizer.json").exists():
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    tokenizer = Tokenizer(WordLevel(WHISPER.token_ids(), unk_token=SPECIALS[EOT]))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(SPECIALS[i], special=True) for i in sorted(SPECIALS)])
    tmp = out / "tokenizer.json.tmp"
    tokenizer.save(str(tmp))
    os.replace(tmp, out / "tokenizer.json")
  return out


# --- the workers, each in a fresh process: a JSON line per mode ---------------------------------------------------

WORKER = textwrap.dedent("""
  import json, statistics, sys, time
  from benchmarks.translate import peak_mb
  from benchmarks.whisper import MODES, features
  system, backend, modes, reps, threads = sys.argv[1], sys.argv[2], sys.argv[3].split(","), int(sys.argv[4]), int(sys.argv[5])
  x = features()
  t0 = time.perf_counter()
  from benchmarks.whisper import load_system
  encode, transcribe = load_system(system, backend, threads)
  load_s = time.perf_counter() - t0
  def timed(fn, *a):
    t0 = time.perf_counter(); out = fn(*a); first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
      t0 = time.perf_counter(); fn(*a); times.append(time.perf_counter() - t0)
    return out, first, statistics.median(times)
  enc_first = enc = None
  if encode is not None: _, enc_first, enc = timed(encode, x)
  for mode in modes:
    ids, first, median = timed(transcribe, x, MODES[mode])
    print("ROW " + json.dumps({"mode": mode, "load_s": load_s, "enc_first_s": enc_first, "enc_s": enc, "first_s": first,
                               "median_s": median, "ids": ids, "peak_mb": peak_mb()}), flush=True)
""")


def load_system(system: str, backend: str, threads: int):
  """(encode(features) or None, transcribe(features, beam) -> the NEW_TOKENS ids after the prompt) for one system."""
  if system == "tfm":
    import tfm
    from tfm.generation.whisper import whisper_generate
    model = tfm.from_pretrained(str(model_dir(WHISPER)), device=backend)
    model.generation_config = {**model.generation_config, "suppress_tokens": SUPPRESSED}
    def encode(x): return model.encode(x)
    def transcribe(x, beam):
      out = whisper_generate(model, x, language="en", task="transcribe", beam_size=beam, max_len=NEW_TOKENS, length_penalty=1.0)
      return out[0].ids.tolist()
    return encode, transcribe
  if system == "torch":
    import torch
    import transformers
    torch.set_num_threads(threads)
    model = transformers.WhisperForConditionalGeneration.from_pretrained(str(model_dir(WHISPER))).eval()
    banned = torch.zeros(WHISPER.vocab_size)
    banned[SUPPRESSED] = -float("inf")
    class Suppress(transformers.LogitsProcessor):   # SUPPRESSED as one added row (suppress_tokens' isin costs ~70 ms a step here)
      def __call__(self, input_ids, scores): return scores + banned
    def encode(x):
      with torch.inference_mode(): return model.model.encoder(torch.from_numpy(x)).last_hidden_state
    def transcribe(x, beam):
      with torch.inference_mode():
        out = model.generate(torch.from_numpy(x), language="en", task="transcribe", return_timestamps=False, num_beams=beam,
                             do_sample=False, max_new_tokens=NEW_TOKENS, logits_processor=[Suppress()], length_penalty=1.0)
      return out.tolist()[0]   # without the prompt
    return encode, transcribe
  import ctranslate2
  if system == "ct2":
    whisper = ctranslate2.models.Whisper(str(ct2_dir(WHISPER)), device="cpu", compute_type="float32", intra_threads=threads)
    def encode(x): return whisper.encode(ctranslate2.StorageView.from_array(x), to_cpu=True)
    def transcribe(x, beam):
      out = whisper.generate(ctranslate2.StorageView.from_array(x), [PROMPT], beam_size=beam, max_length=2 * NEW_TOKENS,
                             suppress_tokens=SUPPRESSED, suppress_blank=False, length_penalty=1.0)
      return out[0].sequences_ids[0]
    return encode, transcribe
  from faster_whisper import WhisperModel
  model = WhisperModel(str(faster_whisper_dir()), device="cpu", compute_type="float32", cpu_threads=threads)
  signal = audio()
  def transcribe(x, beam):   # from the audio: its own features
    segments, _ = model.transcribe(signal, language="en", task="transcribe", beam_size=beam, best_of=1, temperature=0.0,
                                   suppress_tokens=SUPPRESSED, suppress_blank=False, without_timestamps=True,
                                   max_new_tokens=2 * NEW_TOKENS - len(PROMPT) + 2,   # 100 (measured: 196 gives 99)
                                   condition_on_previous_text=False, vad_filter=False, compression_ratio_threshold=None,
                                   log_prob_threshold=None, no_speech_threshold=None)
    return [t for s in segments for t in s.tokens]
  return None, transcribe


def _after_prompt(ids: list[int], prompt: list[int], system: str) -> list[int]:
  if ids[:len(prompt)] != prompt: raise SystemExit(f"{system}'s output does not start with the prompt {prompt}: {ids[:6]}")
  return ids[len(prompt):]


# --- the parent ---------------------------------------------------------------------------------------------------

def _worker(system: str, backend: str, modes: list[str], reps: int, threads: int) -> list[dict]:
  root = Path(__file__).resolve().parents[1]
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
  if backend.endswith(" 1T"): backend, env["TFM_CORES"] = backend[:-3], "0"   # tfm: each kernel's slices on one thread
  proc = subprocess.run([sys.executable, "-c", WORKER, system, backend, ",".join(modes), str(reps), str(threads)],
                        capture_output=True, text=True, env=env, cwd=root, timeout=3600)
  if proc.returncode != 0:
    print(f"{system} on {backend} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return []
  return [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")]


def run(args) -> list[dict]:
  modes = [m.strip() for m in args.modes.split(",") if m.strip()]
  unknown = [m for m in modes if m not in MODES]
  if unknown: raise SystemExit(f"unknown --modes {', '.join(unknown)}; choose from {', '.join(MODES)}")
  if not (_installed("torch") and _installed("transformers")):
    raise SystemExit("the whisper-base-shaped model is made with transformers: pip install -e .[bench]")
  wanted = [s.strip() for s in args.systems.split(",")]
  model_dir(WHISPER)   # made here once, not in each worker
  n = args.threads   # runs: (system, backend, threads)
  backends = [b.strip() for b in args.backends.split(",") if b.strip()] if "tfm" in wanted else []
  runs = [("tfm", b, n) for b in backends] + [("tfm", "CPU 1T", 1) for b in backends if b == "CPU"]
  if "torch" in wanted: runs += [("torch", f"PyTorch CPU {t}T", t) for t in sorted({n, 1}, reverse=True)]
  if "ct2" in wanted and _installed("ctranslate2"): runs += [("ct2", f"CPU {t}T", t) for t in sorted({n, 1}, reverse=True)]
  if "faster-whisper" in wanted and _installed("faster_whisper"):
    faster_whisper_dir()
    runs.append(("faster-whisper", f"CPU {n}T", n))
  rows, reference_ids = [], {}
  for system, backend, threads in runs:
    load = load_average()
    for r in _worker(system, backend, modes, args.reps, threads):
      ids = np.array(r.pop("ids"))
      if ids.shape != (NEW_TOKENS,): print(f"{system} made {ids.size} tokens, not {NEW_TOKENS}")
      reference_ids.setdefault(r["mode"], ids)
      enc = r["enc_s"]
      rows.append({"bench": "whisper", "system": system, "backend": backend, "mode": r["mode"], "load_s": r["load_s"],
                   "enc_first_s": r["enc_first_s"], "enc_ms": None if enc is None else enc * 1e3, "first_s": r["first_s"],
                   "median_ms": r["median_s"] * 1e3, "ms_per_token": None if enc is None else (r["median_s"] - enc) * 1e3 / NEW_TOKENS,
                   "tokens": int(ids.size),
                   "same_ids": _agreement(ids, reference_ids[r["mode"]]), "peak_mb": r["peak_mb"], "load": load})
      print_rows(rows[-1:], COLUMNS, header=len(rows) == 1)
  for row in rows:   # ratios of time: below 1 is faster than the anchor
    for anchor, column in (("torch", "vs_torch"), ("ct2", "vs_ct2")):
      base = min((r for r in rows if r["system"] == anchor and r["mode"] == row["mode"]), key=lambda r: r["median_ms"], default=None)
      row[column] = row["median_ms"] / base["median_ms"] if base else None
  print("\nenc_ms: the encoder alone; median_ms: encoder + 100-token decode; ms_per_token: (median_ms - enc_ms) / 100; "
        "vs_torch, vs_ct2: median_ms / the anchor's (below 1 is faster); same_ids: the fraction of the 100 ids equal to the "
        "first system's")
  print_rows(rows, COLUMNS)
  return rows
