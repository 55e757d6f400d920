"""`tfm compare`: the same inputs through one Transformer on every backend, checked against the float64 oracle.

Each backend that runs here gets the model's weights and the same source batch, and computes
  encoder   memory (B, S, d_model)                  max abs error vs the oracle (tfm/reference.py) <= TOLERANCE[dtype]
  logits    teacher-forced logits (B, T, vocab)     max abs error vs the oracle <= TOLERANCE[dtype]
            (for float16 the oracle takes the weights rounded to float16, as the backend holds them)
  greedy    greedy decoding: token ids              identical to the reference backend's
  beam      beam search (beam 4): token ids         identical to the reference backend's
Timing: "first call" sums the first call of each of the four (tinygrad compiles every kernel then); "median latency"
is the greedy decoding of the batch, the translation itself, over REPEAT warm calls; tokens/s counts the tokens it
generates (up to eos) per second. Backends that cannot run are compile-checked (their kernels rendered, CUDA compiled
to PTX) or listed as unavailable with the reason; the Python emulator is left out of "auto" (it takes minutes).

A Vision Transformer (`--model vit`, `digits`, a tfm file of kind vit or a Hugging Face ViT folder) has the same
contract on a batch of images: its features (every token's final state, B x (1 + patches) x d_model) and logits against
the oracle's (tfm.reference.VisionReference), its top class per image identical to the reference backend's; the
median latency is the logits of the batch, and images/s counts images per second.
"""
from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tinygrad import Context, Tensor, dtypes

import backends
from backends import tables
from backends.compare import PASS, Run, compare, failed
from backends.registry import BackendInfo
from tfm import weights
from tfm.config import TransformerConfig, VisionConfig
from tfm.files import atomic_write
from tfm.errors import InputError, TfmError
from tfm.generation import generate, lengths_to_eos
from tfm.model import Transformer
from tfm.reference import Reference, VisionReference
from tfm.vit import VisionTransformer

# max abs error vs the float64 oracle that a running backend may show: the numerical contract (docs/BACKENDS.md)
TOLERANCE = {"float32": 1e-4, "float16": 2e-2}
SAMPLES = ("3rd of March, 2021", "2021년 3월 3일", "Wednesday, March 3, 2021")
BEAM_SIZE = 4
REPEAT = 3
NEW_TOKENS = 16   # decoding budget beyond the source length (the bundled model's outputs are shorter than its inputs)
ASSETS = Path(__file__).parent / "assets"
BUNDLED = ASSETS / "dates.safetensors"   # its character vocabulary beside it: dates.vocab.json
DIGITS = ASSETS / "digits.safetensors"   # the bundled image classifier (tfm.train_vision)
IMAGES = 3   # images in a ViT subject's batch
SLOW = {"PYTHON": "the Python emulator takes minutes even on small models: ask for it with --backends PYTHON or all"}
COLUMNS = ("backend", "status", "max abs err vs oracle", "vs reference backend", "outputs identical",
           "first call (compile) s", "median latency ms", "tokens/s", "note")
LEGEND = """\
- max abs err vs oracle: the largest |difference| over the encoder output and the logits, against the float64 oracle
  (tfm/reference.py); a backend passes within the tolerance.
- vs reference backend: the same against the reference backend's outputs.
- outputs identical: greedy and beam-search token ids equal to the reference backend's (required to pass).
- first call (compile) s: the first call of the four checks together; tinygrad compiles each kernel on first use
  (compiled binaries are cached on disk, so a second run on the same machine compiles less).
- median latency ms: greedy decoding of the whole batch, median of the warm calls; tokens/s: the tokens it generated
  (each row up to its eos) per second.
- compile-checked: the model's kernels rendered for the backend (CUDA also compiled to PTX by NVRTC); nothing ran."""


@dataclass(frozen=True)
class Subject:
  """The model under comparison, held on the host: its config, float32 weights by checkpoint name, and the inputs."""
  name: str
  config: TransformerConfig
  arrays: dict[str, np.ndarray]
  src: np.ndarray                   # (B, S) source ids, pad-padded
  tgt: np.ndarray                   # (B, T) teacher-forced targets, starting with the decoder start id
  texts: tuple[str, ...] = ()       # the sources as text, when the model came with a tokenizer
  tokenizer: Any = None

  @property
  def max_len(self) -> int: return min(self.config.max_len, self.src.shape[1] + NEW_TOKENS)

  # what the report says about the inputs and the timed step (VisionSubject says it for images)
  timed_step, rate_name, legend = "greedy", "tokens/s", ""

  def describe_inputs(self) -> str:
    inputs = f"{len(self.texts)} sample sentences" if self.texts else f"{self.src.shape[0]} random sources"
    return f"{inputs} (batch {self.src.shape[0]} x {self.src.shape[1]}), greedy and beam {BEAM_SIZE}, up to {self.max_len} tokens"

  def units(self, outputs: dict[str, np.ndarray]) -> int:
    """What one timed call produces: the tokens greedy decoding generated."""
    return generated_tokens(outputs["greedy"], self.config) if "greedy" in outputs else 0

  def inputs_dict(self) -> dict[str, Any]:
    return {"texts": list(self.texts), "src": self.src.tolist(), "tgt": self.tgt.tolist(), "max_len": self.max_len,
            "beam_size": BEAM_SIZE}


@dataclass(frozen=True)
class VisionSubject:
  """A Vision Transformer under comparison, held on the host: its config, float32 weights by checkpoint name, and a
  batch of images (pixels as the model takes them, seeded)."""
  name: str
  config: VisionConfig
  arrays: dict[str, np.ndarray]
  pixels: np.ndarray                # (B, C, H, W)
  texts: tuple[str, ...] = ()
  tokenizer: Any = None
  rate_name = "images/s"
  legend = ("- vision models: the features (every token's final state) and logits against the oracle "
            "(tfm.reference.VisionReference); outputs identical: the top class of each image; median latency: the "
            "logits of the whole batch (the features, for a model without a head); images/s: images per second.")

  @property
  def timed_step(self) -> str: return "logits" if self.config.num_labels else "features"

  def describe_inputs(self) -> str:
    c = self.config
    return f"{self.pixels.shape[0]} random images ({c.num_channels} x {c.image_size} x {c.image_size}), {c.num_patches} patches each"

  def units(self, outputs: dict[str, np.ndarray]) -> int: return self.pixels.shape[0]

  def inputs_dict(self) -> dict[str, Any]: return {"pixels": self.pixels.tolist()}


# --- what to compare ---------------------------------------------------------------------------------------------

def _inputs(config: TransformerConfig, tokenizer: Any, seed: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """The sample sentences when the tokenizer knows their characters, else seeded random ids; random targets."""
  rng = np.random.default_rng(seed)
  texts, rows = [], []
  for text in SAMPLES if tokenizer is not None else ():
    try: ids = tokenizer.encode([text])[0]
    except InputError: continue   # a character the model's vocabulary lacks: leave that sample out
    if len(ids) <= config.max_len: texts.append(text); rows.append(ids)
  first = min(3, config.vocab_size - 1)   # ids below are specials in the bundled vocabularies
  if not rows:
    lengths = [min(n, config.max_len) for n in (7, 5, 6)]
    rows = [list(rng.integers(first, config.vocab_size, n)) for n in lengths]
  src = np.full((len(rows), max(map(len, rows))), config.pad_id, np.int32)
  for i, row in enumerate(rows): src[i, :len(row)] = row
  tgt = rng.integers(first, config.vocab_size, (len(rows), min(6, config.max_len))).astype(np.int32)
  tgt[:, 0] = config.start_id
  return src, tgt, tuple(texts)


def random_arrays(config: TransformerConfig | VisionConfig, seed: int = 0) -> dict[str, np.ndarray]:
  """Seeded random weights under the model's checkpoint names: every bias, gain and the pad row (a ViT's class token
  and positions) non-trivial, so that a backend dropping any of them shows in its output."""
  kind = VisionTransformer if isinstance(config, VisionConfig) else Transformer
  with Context(DEV="NULL"): model = kind(config, device=None, initialise=False)   # the names and shapes only
  rng = np.random.default_rng(seed)
  out = {}
  for name, t in weights.unique_state(model).items():
    gain = "layer_norm" in name and name.endswith(".weight")
    out[name] = ((1.0 if gain else 0.0) + (0.2 if "layer_norm" in name else 0.3) * rng.standard_normal(t.shape)).astype(np.float32)
  return out


def tiny_subject(seed: int = 0, **overrides: Any) -> Subject:
  """The tiny preset with random weights (overrides change the config, e.g. d_model=16 for the Python emulator)."""
  config = TransformerConfig.preset("tiny", **overrides)
  src, tgt, _ = _inputs(config, None, seed)
  return Subject(f"tiny config, random weights (seed {seed})", config, random_arrays(config, seed), src, tgt)


def vision_subject(config: VisionConfig, arrays: dict[str, np.ndarray], name: str, seed: int = 0) -> VisionSubject:
  """A ViT with these weights on a seeded batch of IMAGES random images (pixel values uniform in [-1, 1])."""
  rng = np.random.default_rng(seed)
  pixels = rng.uniform(-1, 1, (IMAGES, config.num_channels, config.image_size, config.image_size)).astype(np.float32)
  return VisionSubject(name, config, arrays, pixels)


def tiny_vision_subject(seed: int = 0, **overrides: Any) -> VisionSubject:
  """The vit-tiny preset with random weights (overrides change the config)."""
  config = VisionConfig.preset("vit-tiny", **overrides)
  return vision_subject(config, random_arrays(config, seed), f"vit-tiny config, random weights (seed {seed})", seed)


def load_subject(model: str | None = None) -> Subject | VisionSubject:
  """The model to compare: "bundled" (tfm/assets), "tiny" (random weights), "vit" (the vit-tiny config, random
  weights), "digits" (the bundled image classifier), a tfm .safetensors file, or a Marian or ViT checkpoint folder.

  None means the bundled model when it is installed, else the tiny one (tfm compare says so on stderr).
  """
  from tfm.tokenizer import CharTokenizer, MarianTokenizer
  if model is None: model = "bundled" if BUNDLED.exists() else "tiny"
  if model == "tiny": return tiny_subject()
  if model == "vit": return tiny_vision_subject()
  if model == "digits":
    if not DIGITS.exists():
      raise TfmError(f"the bundled classifier is not installed ({DIGITS} is missing): reinstall tfm, or compare another "
                     f"model with --model vit | PATH.safetensors | DIR")
    model = str(DIGITS)
  if model == "bundled":
    if not BUNDLED.exists():
      raise TfmError(f"the bundled model is not installed ({BUNDLED} is missing): reinstall tfm, or compare "
                     f"another model with --model tiny | PATH.safetensors | MARIAN_DIR")
    model = str(BUNDLED)
  path = Path(model)
  if path.is_dir():
    from tfm.interop import convert_folder
    conv = convert_folder(path)
    if conv.kind == "vit": return vision_subject(conv.config, conv.arrays, f"ViT checkpoint {path}")
    tokenizer = MarianTokenizer.from_dir(path) if (path / "source.spm").exists() else None
    config, arrays, name = conv.config, conv.arrays, f"Marian checkpoint {path}"
  elif path.is_file():
    wf = weights.read(path)
    if wf.kind == "vit":
      return vision_subject(wf.config, dict(wf.arrays), "bundled classifier (digits.safetensors)" if path == DIGITS else str(path))
    if wf.kind != "transformer":
      raise TfmError(f"{path} holds {wf.kind} (encoder and decoder stacks without embeddings), not a Transformer: "
                     f"tfm compare needs a whole model (token ids in, logits out)")
    vocab = next((v for v in (path.with_suffix(".vocab.json"), path.parent / "vocab.json") if v.exists()), None)
    tokenizer = CharTokenizer.load(vocab) if vocab is not None else None
    config, arrays = wf.config, dict(wf.arrays)   # held: every backend and the oracle take the same numbers
    name = f"bundled model ({path.name})" if path == BUNDLED else str(path)
  else:
    raise TfmError(f"--model {model!r}: no such file or folder; give 'bundled', 'tiny', 'vit', 'digits', a tfm "
                   f".safetensors file or a Marian or ViT checkpoint folder")
  src, tgt, texts = _inputs(config, tokenizer, seed=0)
  return Subject(name, config, arrays, src, tgt, texts, tokenizer)


def oracle(subject: Subject | VisionSubject, dtype: str = "float32") -> dict[str, np.ndarray]:
  """The float64 oracle's encoder output and logits (a ViT's features and logits) for the subject's inputs, from the
  weights as a backend holds them in `dtype` (rounded to float16 for float16, and so are a ViT's pixels: the tolerance
  then measures the backend's arithmetic alone)."""
  arrays = subject.arrays if dtype == "float32" else {k: v.astype(np.float16) for k, v in subject.arrays.items()}
  if isinstance(subject, VisionSubject):
    vref = VisionReference(arrays, subject.config.to_dict())
    pixels = subject.pixels if dtype == "float32" else subject.pixels.astype(np.float16)
    out = {"features": vref.features(pixels)}
    if subject.config.num_labels: out["logits"] = vref.logits(pixels)
    return out
  ref = Reference(arrays, subject.config.to_dict())
  return {"encoder": ref.encode(subject.src), "logits": ref.logits(subject.src, subject.tgt)}


# --- running on a backend -----------------------------------------------------------------------------------------

def model_on(subject: Subject | VisionSubject, device: str, dtype: str = "float32") -> Transformer | VisionTransformer:
  """The subject's model on a backend, its weights copied in (then cast, for float16)."""
  return weights.build(subject.config, subject.arrays, subject.name, device, weights.model_dtype(dtype))


def vision_steps(subject: VisionSubject, dtype: str) -> Callable[[BackendInfo], dict[str, Callable[[], dict[str, np.ndarray]]]]:
  """For backends.compare: build the ViT on a backend and return its checks: features, and logits with the top class."""
  def build(info: BackendInfo):
    model = model_on(subject, info.name, dtype)
    pixels = subject.pixels
    def logits() -> dict[str, np.ndarray]:
      out = model(pixels).numpy().astype(np.float32)
      return {"logits": out, "top class": out.argmax(-1).astype(np.int32)}
    checks = {"features": lambda: {"features": model.features(pixels).numpy().astype(np.float32)}}
    return {**checks, "logits": logits} if subject.config.num_labels else checks
  return build


def steps(subject: Subject | VisionSubject, dtype: str) -> Callable[[BackendInfo], dict[str, Callable[[], dict[str, np.ndarray]]]]:
  """For backends.compare: build the model on a backend and return its four checks, each giving numpy outputs."""
  if isinstance(subject, VisionSubject): return vision_steps(subject, dtype)
  def build(info: BackendInfo):
    model = model_on(subject, info.name, dtype)
    src, tgt, max_len = subject.src, subject.tgt, subject.max_len
    return {
      "encoder": lambda: {"encoder": model.encode(src).numpy().astype(np.float32)},
      "logits": lambda: {"logits": model(src, tgt).numpy().astype(np.float32)},
      "greedy": lambda: {"greedy": generate(model, src, beam_size=1, max_len=max_len)},
      "beam": lambda: {"beam": generate(model, src, beam_size=BEAM_SIZE, max_len=max_len)},
    }
  return build


def vision_graph(config: VisionConfig, dtype: str = "float32") -> Callable[[], Tensor]:
  """A ViT forward pass of `config` with one layer (every kernel kind it has), built on the default device, as
  kernel_graph's: the compile checks run it on the NULL device."""
  config = config.replace(n_layers=1)
  half = dtype == "float16"

  def forward() -> Tensor:
    model = VisionTransformer(config, device=None, initialise=False)
    for p in weights.unique_state(model).values(): p.replace(Tensor.empty(*p.shape, dtype=dtypes.float16 if half else p.dtype))
    pixels = Tensor.empty(1, config.num_channels, config.image_size, config.image_size, dtype=dtypes.float16 if half else dtypes.float32)
    return model.run_classifier(pixels) if config.num_labels else model.run_encoder(pixels)
  return forward


def kernel_graph(config: TransformerConfig | VisionConfig, dtype: str = "float32", src_len: int = 8, tgt_len: int = 8) -> Callable[[], Tensor]:
  """A forward pass of `config` with one layer per stack, every kernel kind the model has (more layers repeat them),
  built on the default device: backends.kernels.render and compile checks run it on the NULL device."""
  if isinstance(config, VisionConfig): return vision_graph(config, dtype)
  config = config.replace(n_encoder_layers=1, n_decoder_layers=1)
  token, half = min(5, config.vocab_size - 1), dtype == "float16"
  src, tgt = np.full((1, src_len), token), np.full((1, tgt_len), token)

  def forward() -> Tensor:
    model = Transformer(config, device=None, initialise=False)   # on NULL nothing runs and nothing is allocated
    for p in weights.unique_state(model).values(): p.replace(Tensor.empty(*p.shape, dtype=dtypes.float16 if half else p.dtype))
    source = model.ids(src, "src")
    return model.run_decoder(model.ids(tgt, "tgt"), model.run_encoder(source), model.padding_mask(source))
  return forward


def select_backends(spec: str = "auto") -> tuple[list[BackendInfo], dict[str, str]]:
  """The backends to compare and those left out with why: "auto" (all but the emulator), "all", or "CPU,CL,...". """
  if not isinstance(spec, str) or not spec.strip():
    raise InputError(f"--backends {spec!r}: give auto, all or a comma-separated list such as CPU,CL")
  key = spec.strip().lower()
  if key in ("auto", "all"): return backends.available(), dict(SLOW) if key == "auto" else {}
  try: names = [backends.lookup(name).name for name in spec.split(",")]
  except ValueError as e: raise InputError(f"--backends {spec!r}: {e}") from None
  return [backends.probe(name) for name in dict.fromkeys(names)], {}


# --- the report ---------------------------------------------------------------------------------------------------

def generated_tokens(ids: np.ndarray, config: TransformerConfig) -> int:
  """Tokens produced by decoding: each row up to and including its eos (pad after it is not generated)."""
  return int(lengths_to_eos(ids, config.eos_id).sum())


@dataclass
class Report:
  """The comparison's result: one Run per backend, plus what was compared and how."""
  subject: Subject | VisionSubject
  dtype: str
  runs: list[Run]
  date: str = field(default_factory=lambda: datetime.date.today().isoformat())

  @property
  def tolerance(self) -> float: return TOLERANCE[self.dtype]

  @property
  def ok(self) -> bool: return not failed(self.runs)

  @property
  def reference(self) -> Run | None: return next((r for r in self.runs if r.is_reference), None)

  def translations(self) -> list[str]:
    """The reference backend's greedy outputs as text (when the model has a tokenizer)."""
    ref = self.reference
    if ref is None or self.subject.tokenizer is None or "greedy" not in ref.outputs: return []
    return self.subject.tokenizer.decode(ref.outputs["greedy"].tolist())

  def row(self, run: Run) -> list[str]:
    def num(x: float | None, fmt: str) -> str: return "-" if x is None else format(x, fmt)
    timed = run.timings.get(self.subject.timed_step)
    latency = timed.median_s if timed else None
    tokens = self.subject.units(run.outputs) if run.outputs else 0
    same = "reference" if run.is_reference else {None: "-", True: "yes", False: "NO"}[run.all_identical]
    vs_ref = "reference" if run.is_reference else num(run.max_vs_reference, ".1e")
    return [run.backend.name, run.status, num(run.max_error, ".1e"), vs_ref, same, num(run.first_s, ".1f"),
            num(None if latency is None else latency * 1e3, ".1f"), num(tokens / latency if latency else None, ".0f"), run.note]

  def header(self) -> str:
    s = self.subject
    return f"model: {s.name}; {self.dtype}, tolerance {self.tolerance:g} (max abs error vs the float64 oracle); {s.describe_inputs()}"

  def columns(self) -> list[str]:
    return [self.subject.rate_name if c == "tokens/s" else c for c in COLUMNS]

  def summary(self) -> str:
    bad = failed(self.runs)
    if bad: return "FAILED: " + "; ".join(f"{r.backend.name}: {r.status} ({r.note})" for r in bad)
    ran = [r.backend.name for r in self.runs if r.status == PASS]
    if not ran: return "no backend ran: nothing was compared (see the notes)"
    return f"ok: ran on {', '.join(ran)}: within tolerance, with identical outputs"

  def table(self) -> str:
    """Aligned plain text, one backend a line."""
    table = tables.aligned([self.columns()] + [self.row(r) for r in self.runs])
    return "\n".join([self.header(), *self.examples(), "", table, "", self.summary()])

  def examples(self) -> list[str]:
    """'source' -> 'reference backend's greedy output', one line per sample sentence."""
    return [f"  {src!r} -> {out!r}" for src, out in zip(self.subject.texts, self.translations())]

  def markdown(self) -> str:
    """A markdown table, with the legend that says what each column measures."""
    table = tables.markdown([self.columns()] + [self.row(r) for r in self.runs])
    legend = LEGEND + ("\n" + self.subject.legend if self.subject.legend else "")
    return "\n".join([self.header(), *self.examples(), "", table, "", self.summary(), "", legend])

  def to_dict(self) -> dict[str, Any]:
    s = self.subject
    return {"date": self.date, "model": s.name, "config": s.config.to_dict(), "dtype": self.dtype, "tolerance": self.tolerance,
            "inputs": s.inputs_dict(),
            "translations": self.translations(), "ok": self.ok, "runs": [r.to_dict() for r in self.runs]}

  def write_json(self, path: str | os.PathLike) -> None:
    """The report as JSON, written atomically."""
    text = json.dumps(self.to_dict(), indent=1, ensure_ascii=False, allow_nan=False)
    def write(tmp: str) -> None: Path(tmp).write_text(text + "\n", encoding="utf-8")
    atomic_write(path, write)


def run(subject: Subject | VisionSubject, backend_spec: str = "auto", dtype: str = "float32", repeat: int = REPEAT,
        progress: bool | None = None, reference: str = "CPU") -> Report:
  """Compare the subject on the selected backends; `reference` is the backend the others' ids must equal."""
  if dtype not in TOLERANCE: raise InputError(f"dtype={dtype!r} is not supported; choose one of {', '.join(TOLERANCE)}")
  infos, skip = select_backends(backend_spec)
  runs = compare(steps(subject, dtype), infos, expected=oracle(subject, dtype), tolerance=TOLERANCE[dtype], reference=reference,
                 repeat=repeat, dtype=dtype, graph=kernel_graph(subject.config, dtype), skip=skip, progress=progress)
  return Report(subject, dtype, runs)
