"""`tfm compare`: the same inputs through one Transformer on every backend, checked against the float64 oracle.

Each backend that runs here gets the model's weights and the same source batch, and computes
  encoder   memory (B, S, d_model)                  max abs error vs the oracle (tfm/reference.py) <= TOLERANCE[dtype]
  logits    teacher-forced logits (B, T, vocab)     max abs error vs the oracle <= TOLERANCE[dtype]
            (for float16 the oracle takes the weights rounded to float16, as the backend holds them)
  greedy    greedy decoding: token ids              identical to the oracle's own greedy decoding, or a near tie
  beam      beam search (beam 4): token ids         identical to the oracle's own beam search, or a near tie
            (a tie: they differ first where the oracle's two choices are within 2 x the tolerance: tfm.apps.oracle_decode)
Timing: "first call" sums the first call of each of the four (tinygrad compiles every kernel then); "median latency"
is the greedy decoding of the batch, the translation itself, over REPEAT warm calls; tokens/s counts the tokens it
generates (up to eos) per second. Backends that cannot run are compile-checked (their kernels rendered, CUDA compiled
to PTX) or listed as unavailable with the reason; the Python emulator is left out of "auto" (it takes minutes).

A Vision Transformer (`--model vit`, `digits`, a tfm file of kind vit or a Hugging Face ViT folder) has the same
contract on a batch of images: its features (every token's final state, B x (1 + patches) x d_model) and logits against
the oracle's (tfm.reference.VisionReference), its top class per image the oracle's (or a near tie); the
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
from tinygrad import Tensor, dtypes

import backends
from backends import tables
from backends.compare import PASS, Judge, Run, compare, failed
from backends.select import several
from backends.registry import BackendInfo
from tfm.io import weights
from tfm.config import TransformerConfig, VisionConfig
from tfm.files import atomic_write
from tfm.errors import InputError
from tfm.generation import generate
from tfm.nn.base import unique_state
from tfm.nn.linear import linear_layers
from tfm.io.weights import int8_twin
from tfm.nn.transformer import Transformer
from tfm.reference import Reference, VisionReference
from tfm.apps import oracle_decode
from tfm.apps.subjects import BEAM_SIZE, AudioSubject, Subject, VisionSubject
from tfm.nn.vit import VisionTransformer

# max abs error vs the float64 oracle that a running backend may show: the numerical contract (docs/BACKENDS.md)
TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "int8": 1e-4}   # int8: against the oracle of its dequantized weights
REPEAT = 3
SLOW = {"PYTHON": "the Python emulator takes minutes even on small models: ask for it with --backends PYTHON or all"}
COLUMNS = ("backend", "status", "max abs err vs oracle", "vs reference backend", "outputs identical",
           "first call (compile) s", "median latency ms", "tokens/s", "note")
LEGEND = """\
- max abs err vs oracle: the largest |difference| over the encoder output and the logits, against the float64 oracle
  (tfm/reference.py); a backend passes within the tolerance.
- vs reference backend: the same against the reference backend's outputs.
- outputs identical: greedy and beam-search token ids equal to the oracle's own decoding (required to pass); "tie":
  they differ first where the oracle's best and the backend's choice are within 2 x the tolerance (the note says where).
- first call (compile) s: the first call of the four checks together; tinygrad compiles each kernel on first use
  (compiled binaries are cached on disk, so a second run on the same machine compiles less).
- median latency ms: greedy decoding of the whole batch, median of the warm calls; tokens/s: the tokens it generated
  (each row up to its eos) per second.
- compile-checked: the model's kernels rendered for the backend (CUDA also compiled to PTX by NVRTC); nothing ran."""


def oracle_model(subject: Subject | VisionSubject, dtype: str = "float32") -> Reference | VisionReference:
  """The float64 oracle holding the weights as a backend holds them in `dtype`: rounded to float16 for float16, the
  int8 model's dequantized weights for int8 (tfm.io.weights.int8_twin); the tolerance then measures the arithmetic."""
  if dtype == "int8":
    config, arrays = int8_twin(subject.config, subject.arrays)
    return Reference(arrays, config.to_dict())
  arrays = subject.arrays if dtype == "float32" else {k: v.astype(np.float16) for k, v in subject.arrays.items()}
  return (VisionReference if isinstance(subject, VisionSubject) else Reference)(arrays, subject.config.to_dict())


def oracle(subject: Subject | VisionSubject, dtype: str = "float32") -> dict[str, np.ndarray]:
  """The float64 oracle's encoder output and logits (a ViT's features and logits) for the subject's inputs, from the
  weights as a backend holds them in `dtype` (and a ViT's pixels rounded to float16 for float16)."""
  ref = oracle_model(subject, dtype)
  if isinstance(ref, VisionReference):
    pixels = subject.pixels if dtype == "float32" else subject.pixels.astype(np.float16)
    return {"features": ref.features(pixels), **({"logits": ref.logits(pixels)} if subject.config.num_labels else {})}
  return {"encoder": ref.encode(subject.src), "logits": ref.logits(subject.src, subject.tgt)}


def decoded(subject: Subject | VisionSubject, dtype: str, expected: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Judge]:
  """The ids every backend's must equal (the oracle's greedy and beam decoding, a ViT's top class by the oracle's
  logits), and the judge of a difference: a near tie of the oracle's own choices, or a failure (oracle_decode)."""
  tolerance = TOLERANCE[dtype]
  if isinstance(subject, AudioSubject): return {}, lambda key, got: None   # logits only: Whisper decodes by its own rules
  if isinstance(subject, Subject):
    return oracle_decode.decodings(oracle_model(subject, dtype), subject.config, subject.src, subject.max_len, BEAM_SIZE, tolerance)
  if "logits" not in expected: return {}, lambda key, got: None
  logits = expected["logits"]
  def top_class(key: str, got: np.ndarray) -> str | None:
    want = logits.argmax(-1)
    apart = logits[np.arange(len(got)), want] - logits[np.arange(len(got)), got]
    if key != "top class" or (apart > oracle_decode.TIE_FACTOR * tolerance).any(): return None
    return "; ".join(f"image {i}: oracle's {w} vs {g}, {a:.1e} apart" for i, (w, g, a) in enumerate(zip(want, got, apart)) if w != g)
  return {"top class": logits.argmax(-1)}, top_class


# --- running on a backend -----------------------------------------------------------------------------------------

def model_on(subject: Subject | VisionSubject, device: str, dtype: str = "float32") -> Transformer | VisionTransformer:
  """The subject's model on a backend, its weights copied in (then cast, for float16). On several devices ("CPU*2")
  it is split so that the comparison crosses devices: data parallel when the subject's batch splits evenly over
  them, else tensor parallel."""
  return weights.build(subject.config, subject.arrays, subject.name, device, dtype, split_mode(subject, backends.select(device)))


def split_mode(subject: Subject | VisionSubject, info: BackendInfo) -> str | None:
  """How `model_on` splits the subject's model over info's devices (None: one device)."""
  if len(info.devices) < 2 or not isinstance(subject, Subject): return None
  # compile checks (a backend that cannot run here) render the tensor-parallel graph: its all-reduces are kernels too
  return "data" if info.runs and subject.src.shape[0] % len(info.devices) == 0 else "tensor"


def vision_steps(subject: VisionSubject, dtype: str) -> Callable[[BackendInfo], dict[str, Callable[[], dict[str, np.ndarray]]]]:
  """For backends.compare: build the ViT on a backend and return its checks: features, and logits with the top class."""
  def build(info: BackendInfo):
    model = model_on(subject, info.label, dtype)
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
    model = model_on(subject, info.label, dtype)
    src, tgt, max_len = subject.src, subject.tgt, subject.max_len
    checks = {"encoder": lambda: {"encoder": model.encode(src).numpy().astype(np.float32)},
              "logits": lambda: {"logits": model(src, tgt).numpy().astype(np.float32)}}
    if isinstance(subject, AudioSubject): return checks   # Whisper decodes by its own rules (tfm transcribe)
    return {**checks, "greedy": lambda: {"greedy": generate(model, src, beam_size=1, max_len=max_len)},
            "beam": lambda: {"beam": generate(model, src, beam_size=BEAM_SIZE, max_len=max_len)}}
  return build


def vision_graph(config: VisionConfig, dtype: str = "float32") -> Callable[[], Tensor]:
  """A ViT forward pass of `config` with one layer (every kernel kind it has), built on the default device, as
  kernel_graph's: the compile checks run it on the NULL device."""
  config = config.replace(n_layers=1)
  half = dtype == "float16"

  def forward() -> Tensor:
    model = VisionTransformer(config, device=None, initialise=False)
    for p in unique_state(model).values(): p.replace(Tensor.empty(*p.shape, dtype=dtypes.float16 if half else p.dtype))
    pixels = Tensor.empty(1, config.num_channels, config.image_size, config.image_size, dtype=dtypes.float16 if half else dtypes.float32)
    return model.run_classifier(pixels) if config.num_labels else model.run_encoder(pixels)
  return forward


def kernel_graph(config: TransformerConfig | VisionConfig, dtype: str = "float32", src_len: int = 8, tgt_len: int = 8,
                 devices: int = 1) -> Callable[[], Tensor]:
  """A forward pass of `config` with one layer per stack, every kernel kind the model has (more layers repeat them),
  built on the default device: backends.kernels.render and compile checks run it on the NULL device. With devices > 1,
  split tensor parallel over that many NULL devices (heads and FFN columns, the all-reduces' kernels with them)."""
  if isinstance(config, VisionConfig): return vision_graph(config, dtype)
  config = config.replace(n_encoder_layers=1, n_decoder_layers=1)
  token, half = min(5, config.vocab_size - 1), dtype == "float16"
  src, tgt = np.full((1, src_len), token), np.full((1, tgt_len), token)
  if config.n_mels: src = np.zeros((1, config.n_mels, 2 * config.max_source_len), np.float32)   # Whisper's log-mel window

  def forward() -> Tensor:
    model = Transformer(config, device=None, initialise=False)   # on NULL nothing runs and nothing is allocated
    for p in unique_state(model).values(): p.replace(Tensor.empty(*p.shape, dtype=dtypes.float16 if half else p.dtype))
    if dtype == "int8":
      for layer in linear_layers(model):
        layer.weight, layer.scale = Tensor.empty(*layer.weight.shape, dtype=dtypes.int8), Tensor.empty(layer.weight.shape[0])
    if devices > 1: model.lay_out(tuple("NULL" if i == 0 else f"NULL:{i}" for i in range(devices)), "tensor")
    source = model.placed(model.check_source(src, "src"))
    return model.run_decoder(model.ids(tgt, "tgt"), model.run_encoder(source), model.source_mask(source))
  return forward


def select_backends(spec: str = "auto") -> tuple[list[BackendInfo], dict[str, str]]:
  """The backends to compare and those left out with why: "auto" (all but the emulator), "all", or "CPU,CL,...";
  an entry "CPU*2" is a model split over two CPU devices (as `split_mode` says, tfm.runtime.placement)."""
  if not isinstance(spec, str) or not spec.strip():
    raise InputError(f"--backends {spec!r}: give auto, all or a comma-separated list such as CPU,CL")
  key = spec.strip().lower()
  if key in ("auto", "all"): return backends.available(), dict(SLOW) if key == "auto" else {}
  try:
    names = [name.strip() if "*" in name else backends.lookup(name).name for name in spec.split(",")]
    return [several(name) if "*" in name else backends.probe(name) for name in dict.fromkeys(names)], {}
  except ValueError as e: raise InputError(f"--backends {spec!r}: {e}") from None


# --- the report ---------------------------------------------------------------------------------------------------

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
    rate = (self.subject.units(run.outputs) if run.outputs else 0) / latency if latency else None   # a Whisper window: < 1/s
    same = "tie" if run.ties and run.status == PASS else {None: "-", True: "yes", False: "NO"}[run.all_identical]
    vs_ref = "reference" if run.is_reference else num(run.max_vs_reference, ".1e")
    mode = split_mode(self.subject, run.backend)
    return [run.backend.label + (f" ({mode} parallel)" if mode else ""), run.status, num(run.max_error, ".1e"), vs_ref, same, num(run.first_s, ".1f"),
            num(None if latency is None else latency * 1e3, ".1f"), num(rate, ".0f" if (rate or 0) >= 10 else ".2f"), run.note]

  def header(self) -> str:
    s = self.subject
    return f"model: {s.name}; {self.dtype}, tolerance {self.tolerance:g} (max abs error vs the float64 oracle); {s.describe_inputs()}"

  def columns(self) -> list[str]:
    return [self.subject.rate_name if c == "tokens/s" else c for c in COLUMNS]

  def summary(self) -> str:
    bad = failed(self.runs)
    if bad: return "FAILED: " + "; ".join(f"{r.backend.label}: {r.status} ({r.note})" for r in bad)
    ran = [r.backend.label for r in self.runs if r.status == PASS]
    if not ran: return "no backend ran: nothing was compared (see the notes)"
    tied = [r.backend.label for r in self.runs if r.status == PASS and r.ties]
    ids = f"the oracle's ids, but near ties on {', '.join(tied)} (see the notes)" if tied else "the oracle's ids"
    return f"ok: ran on {', '.join(ran)}: within tolerance" + ("" if isinstance(self.subject, AudioSubject) else f", with {ids}")

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
  """Compare the subject on the selected backends: each against the oracle; `reference` is the backend whose outputs
  the others are also diffed with (the "vs reference backend" column) and whose translations the report shows."""
  if dtype not in TOLERANCE: raise InputError(f"dtype={dtype!r} is not supported; choose one of {', '.join(TOLERANCE)}")
  if dtype == "int8" and isinstance(subject, VisionSubject):
    raise InputError("dtype='int8' is for translation models; compare a Vision Transformer in float32 or float16")
  infos, skip = select_backends(backend_spec)
  # a split model that cannot run here is compile-checked over as many NULL devices (a graph of its own)
  unrun = [i for i in infos if len(i.devices) > 1 and not i.runs]
  expected = oracle(subject, dtype)
  ids, judge = decoded(subject, dtype, expected)
  runs = compare(steps(subject, dtype), [i for i in infos if i not in unrun], expected={**expected, **ids},
                 tolerance=TOLERANCE[dtype], reference=reference, repeat=repeat, dtype=dtype,
                 graph=kernel_graph(subject.config, dtype), skip=skip, progress=progress, judge=judge)
  for info in unrun:
    graph = None if isinstance(subject, VisionSubject) else kernel_graph(subject.config, dtype, devices=len(info.devices))
    runs += compare(steps(subject, dtype), [info], dtype=dtype, graph=graph, progress=False)
  order = {id(i): n for n, i in enumerate(infos)}
  return Report(subject, dtype, sorted(runs, key=lambda r: order[id(r.backend)]))
