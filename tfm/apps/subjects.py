"""What `tfm compare` compares: a subject is one model held on the host (its config, float32 weights by checkpoint
name) with the inputs every backend and the oracle get: sample sentences or seeded random ids for a Transformer
(`Subject`), a seeded batch of images for a Vision Transformer (`VisionSubject`); `load_subject` makes one from what
`--model` names."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tinygrad import Context

from tfm.io import weights
from tfm.io.audio import HOP_LENGTH, SAMPLE_RATE, log_mel
from tfm.config import TransformerConfig, VisionConfig
from tfm.errors import InputError, TfmError
from tfm.files import BUNDLED_CLASSIFIER, BUNDLED_MODEL
from tfm.generation import lengths_to_eos
from tfm.generation.batching import padded
from tfm.nn.base import unique_state
from tfm.nn.transformer import Transformer
from tfm.nn.vit import VisionTransformer

SAMPLES = ("3rd of March, 2021", "2021년 3월 3일", "Wednesday, March 3, 2021")
BEAM_SIZE = 4
NEW_TOKENS = 16   # decoding budget beyond the source length (the bundled model's outputs are shorter than its inputs)
BUNDLED, DIGITS = Path(BUNDLED_MODEL), Path(BUNDLED_CLASSIFIER)
IMAGES = 3   # images in a ViT subject's batch
SOUNDS = ("tone 440 Hz", "chirp 100 Hz-7.9 kHz")   # an audio subject's batch, one window each


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
class AudioSubject(Subject):
  """A Whisper model under comparison: `src` holds the log-mel features (B, n_mels, frames) of seeded synthetic sounds;
  the encoder output and teacher-forced logits are compared (decoding Whisper needs its own rules: tfm transcribe)."""
  timed_step, rate_name = "logits", "windows/s"
  legend = ("- audio models (Whisper): the encoder output and teacher-forced logits for the log-mel features of "
            "synthetic sounds (a tone, a chirp) against the oracle; median latency: the logits of the batch; windows/s: "
            "windows of audio per second.")

  @property
  def max_len(self) -> int: return min(self.config.max_len, self.tgt.shape[1] + NEW_TOKENS)

  def describe_inputs(self) -> str:
    b, n_mels, frames = self.src.shape
    return f"{b} synthetic sounds ({', '.join(SOUNDS)}) as log-mel features ({n_mels} x {frames}), {self.tgt.shape[1]} target tokens"

  def units(self, outputs: dict[str, np.ndarray]) -> int: return self.src.shape[0]

  def inputs_dict(self) -> dict[str, Any]: return {"sounds": list(SOUNDS), "tgt": self.tgt.tolist()}


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
  src = padded(rows, config.pad_id)
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
  for name, t in unique_state(model).items():
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


def sounds(seconds: float) -> np.ndarray:
  """SOUNDS as 16 kHz samples (len(SOUNDS), seconds x 16000), amplitude 0.5, with a little seeded noise."""
  t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
  tone, chirp = np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * (100 * t + (7900 - 100) / (2 * seconds) * t * t))
  noise = 0.01 * np.random.default_rng(0).standard_normal((2, len(t)))
  return (0.5 * np.stack([tone, chirp]) + noise).astype(np.float32)


def audio_subject(config: TransformerConfig, arrays: dict[str, np.ndarray], name: str, seed: int = 0) -> AudioSubject:
  """A Whisper model with these weights on the log-mel features of SOUNDS, one window (2 x max_source_len frames) each,
  and seeded random targets after the decoder's start token."""
  frames = 2 * config.max_source_len
  src = np.stack([log_mel(x, config.n_mels, frames * HOP_LENGTH) for x in sounds(frames * HOP_LENGTH / SAMPLE_RATE)])
  rng = np.random.default_rng(seed)
  tgt = rng.integers(0, config.vocab_size, (len(src), min(6, config.max_len))).astype(np.int32)
  tgt[:, 0] = config.start_id
  return AudioSubject(name, config, arrays, src, tgt)


def load_subject(model: str | None = None) -> Subject | VisionSubject:
  """The model to compare: "bundled" (tfm/assets), "tiny" (random weights), "vit" (the vit-tiny config, random
  weights), "digits" (the bundled image classifier), a tfm .safetensors file, or a checkpoint folder (Marian,
  NLLB/M2M100, BART, mBART, Pegasus, T5, ViT, Whisper: its encoder and logits on the log-mel features of synthetic sounds).

  None means the bundled model when it is installed, else the tiny one (tfm compare says so on stderr).
  """
  from tfm.io.tokenizer import CharTokenizer, MarianTokenizer
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
    from tfm.interop.folders import convert_folder, model_type
    conv = convert_folder(path)
    if conv.kind == "vit": return vision_subject(conv.config, conv.arrays, f"ViT checkpoint {path}")
    if conv.config.n_mels: return audio_subject(conv.config, conv.arrays, f"whisper checkpoint {path}")
    tokenizer = MarianTokenizer.from_dir(path) if (path / "source.spm").exists() else None
    config, arrays, name = conv.config, conv.arrays, f"{model_type(path) or 'marian'} checkpoint {path}"
  elif path.is_file():
    wf = weights.read(path)
    if wf.kind == "vit":
      return vision_subject(wf.config, dict(wf.arrays), "bundled classifier (digits.safetensors)" if path == DIGITS else str(path))
    if wf.dtype == "int8":
      raise TfmError(f"{path} holds int8 weights: compare the float file it was made from, with --dtype int8 "
                     f"(the oracle takes that file's weights quantized as the int8 model holds them)")
    if wf.kind != "transformer":
      raise TfmError(f"{path} holds {wf.kind} (encoder and decoder stacks without embeddings), not a Transformer: "
                     f"tfm compare needs a whole model (token ids in, logits out)")
    if wf.config.n_mels: return audio_subject(wf.config, dict(wf.arrays), str(path))
    vocab = next((v for v in (path.with_suffix(".vocab.json"), path.parent / "vocab.json") if v.exists()), None)
    tokenizer = CharTokenizer.load(vocab) if vocab is not None else None
    config, arrays = wf.config, dict(wf.arrays)   # held: every backend and the oracle take the same numbers
    name = f"bundled model ({path.name})" if path == BUNDLED else str(path)
  else:
    raise TfmError(f"--model {model!r}: no such file or folder; give 'bundled', 'tiny', 'vit', 'digits', a tfm "
                   f".safetensors file or a checkpoint folder (Marian, NLLB/M2M100, BART, mBART, Pegasus, T5, ViT, Whisper)")
  src, tgt, texts = _inputs(config, tokenizer, seed=0)
  return Subject(name, config, arrays, src, tgt, texts, tokenizer)


def generated_tokens(ids: np.ndarray, config: TransformerConfig) -> int:
  """Tokens produced by decoding: each row up to and including its eos (pad after it is not generated)."""
  return int(lengths_to_eos(ids, config.eos_id).sum())
