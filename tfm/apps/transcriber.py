"""Transcriber: speech in, text out, with a Whisper model, its tokenizer and tfm.generation.whisper.

    tr = tfm.Transcriber.load("whisper-tiny/")              # a Whisper checkpoint folder (config.json,
                                                            # model.safetensors, tokenizer.json)
    t = tr.transcribe("talk.wav")                           # WAV or .npy (tfm.io.audio), or an array of 16 kHz samples
    t.text, t.language                                      # " Hello there.", "en"
    t = tr.transcribe("talk.wav", timestamps=True)          # t.segments: Segment(start, end, text, ids), in seconds
    tr.transcribe("talk.wav", language="de", task="translate", beam_size=5)

Audio longer than the model's window (30 s) is read window after window, as WhisperForConditionalGeneration.generate
reads long audio: the log-mel features of the whole recording are computed once (so every window shares one loudness
reference) and cut into windows, the last one padded with zero features. With timestamps, each window is cut into
segments at its timestamp tokens and the next window starts where the last complete segment ends (a segment the window
cut off is decoded again from its start); without, the windows follow one another. The language is detected once, on
the first window, unless given. Audio up to one window long gets the features of the window padded with silence,
as transformers' feature extractor computes them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from tfm.errors import InputError, WeightsError
from tfm.generation.whisper import detect_language, whisper_generate
from tfm.io.audio import HOP_LENGTH, SAMPLE_RATE, as_audio, log_mel, read_audio
from tfm.io.whisper import FRAMES_PER_POSITION, TIME_PRECISION, Segment, WhisperTokenizer, language_code
from tfm.nn.transformer import Transformer
from tfm.apps.translator import LOCK, moved

TASKS = ("transcribe", "translate")


@dataclass(frozen=True)
class Transcript:
  """What was said: the whole text, its segments (one per window without timestamps), the language (a code such as
  "en"; None for an English-only model) and the audio's length in seconds. Texts keep the leading space Whisper's
  tokens carry, as transformers' decode gives them."""
  text: str
  segments: tuple[Segment, ...]
  language: str | None
  duration: float


class Transcriber:
  """A Whisper model (a tfm.Transformer with an audio encoder, config.n_mels > 0) and its tokenizer: `transcribe`
  turns one recording into a Transcript. `device` runs the model there (a copy of it when it lives elsewhere); None
  keeps it where it is. Calls hold tfm.apps.translator.LOCK (tinygrad's state is process-wide)."""

  def __init__(self, model: Transformer, tokenizer: WhisperTokenizer, device: Any = None):
    if not isinstance(model, Transformer) or not model.config.n_mels:
      raise InputError(f"model must be a Whisper model (a tfm.Transformer with n_mels > 0), got "
                       f"{type(model).__name__}{' without an audio encoder' if isinstance(model, Transformer) else ''}")
    if tokenizer.vocab_size > model.config.vocab_size:
      raise InputError(f"the tokenizer's vocab_size={tokenizer.vocab_size} exceeds the model's vocab_size="
                       f"{model.config.vocab_size}: use the tokenizer.json saved with this checkpoint")
    self.model, self.tokenizer = moved(model, device), tokenizer

  @classmethod
  def load(cls, path: str | os.PathLike, device: Any = None, dtype: str | None = None) -> Transcriber:
    """A Whisper checkpoint folder as transformers saves it: config.json, model.safetensors and tokenizer.json."""
    from tfm.interop.folders import from_pretrained, model_type
    path = os.fspath(path)
    if not os.path.isdir(path):
      raise WeightsError(f"{path} is not a folder; give a Whisper checkpoint folder (config.json, model.safetensors, "
                         f"tokenizer.json), as transformers' save_pretrained writes it")
    kind = model_type(path)
    if kind is not None and kind != "whisper":
      raise WeightsError(f"{path} holds a {kind} model, not Whisper: transcribe with a Whisper checkpoint folder "
                         f"(`tfm translate --model {path}` for text models)")
    tokenizer = WhisperTokenizer.from_dir(path)
    return cls(from_pretrained(path, device, dtype), tokenizer)

  # --- audio -> windows of features ------------------------------------------------------------------------------------

  @property
  def window_frames(self) -> int:
    """10 ms frames in one window: 3000 (30 s) for every released Whisper, twice the encoder's positions."""
    return FRAMES_PER_POSITION * self.model.config.max_source_len

  def samples(self, audio: Any) -> np.ndarray:
    """A path (WAV, .npy) or an array of 16 kHz samples -> float32 samples."""
    x = read_audio(audio) if isinstance(audio, (str, os.PathLike)) else as_audio(audio)
    if len(x) < HOP_LENGTH:
      raise InputError(f"audio has {len(x)} samples ({len(x) / SAMPLE_RATE * 1000:.0f} ms); give at least {HOP_LENGTH} "
                       f"(10 ms at 16 kHz)")
    return x

  def features(self, samples: np.ndarray) -> tuple[np.ndarray, int]:
    """The log-mel features the windows are cut from (n_mels, frames), and the frames that hold audio: audio up to one
    window padded with silence to the window, longer audio as it is."""
    n_mels, window = self.model.config.n_mels, self.window_frames
    frames = len(samples) // HOP_LENGTH
    if len(samples) <= window * HOP_LENGTH: return log_mel(samples, n_mels, window * HOP_LENGTH), frames
    return log_mel(samples, n_mels, None), frames

  def window(self, features: np.ndarray, seek: int) -> np.ndarray:
    """(1, n_mels, window_frames): the features from frame `seek` on, padded with zeros past the end."""
    part = features[:, seek:seek + self.window_frames]
    return np.pad(part, ((0, 0), (0, self.window_frames - part.shape[1])))[None]

  # --- transcription ---------------------------------------------------------------------------------------------------

  def transcribe(self, audio: Any, language: str | None = None, task: str = "transcribe", timestamps: bool = False,
                 beam_size: int | None = None, max_len: int | None = None, length_penalty: float | None = None,
                 prompt: str | None = None, progress: Callable[[float, float], None] | None = None) -> Transcript:
    """One recording (a WAV or .npy path, or 1-D float samples at 16 kHz) -> Transcript.

    language: its code ("en", "de", ...) or English name ("German"; None detects it on the first window); task:
    "transcribe" (in its language) or "translate" (into English); timestamps: segments cut at the model's timestamp tokens (else one per window);
    beam_size, max_len (tokens per window), length_penalty as tfm.generation.whisper.whisper_generate takes them;
    prompt: text given to every window as the text before it (names, spellings, a style), as transformers' generate
    feeds prompt_ids. progress(done, total), where given, is called with seconds of audio after each window."""
    if task not in TASKS: raise InputError(f"task={task!r}; Whisper's tasks are {' and '.join(TASKS)}")
    if language is not None and not isinstance(language, str):
      raise InputError(f"language={language!r}; give a language code such as 'en' (None detects it)")
    language = None if language is None else language_code(language)
    if prompt is not None and not isinstance(prompt, str): raise InputError(f"prompt must be a str, got {type(prompt).__name__}")
    prompt_ids = None if prompt is None else self.tokenizer.encode(prompt)
    samples = self.samples(audio)
    with LOCK:
      features, total = self.features(samples)
      segments: list[Segment] = []
      seek = 0
      while seek < total:
        frames = min(total - seek, self.window_frames)   # of audio in this window
        (out,) = whisper_generate(self.model, self.window(features, seek), language=language, task=task, timestamps=timestamps,
                                  beam_size=beam_size, max_len=max_len, length_penalty=length_penalty, prompt_ids=prompt_ids)
        language = out.language if language is None else language   # detected once, on the first window
        found, covered = self.tokenizer.split(out.ids.tolist(), seek * TIME_PRECISION / FRAMES_PER_POSITION, frames)
        segments += found
        # a window that covers nothing (a first segment ending at <|0.00|>) would be read again forever: move on
        seek += covered if covered > 0 else frames
        if progress is not None: progress(min(seek, total) * HOP_LENGTH / SAMPLE_RATE, total * HOP_LENGTH / SAMPLE_RATE)
    text = self.tokenizer.decode([i for s in segments for i in s.ids])
    return Transcript(text, tuple(segments), language, len(samples) / SAMPLE_RATE)

  def detect_language(self, audio: Any) -> tuple[str, float]:
    """The language of a recording's first window, as transcribe detects it: its code and its probability among the
    checkpoint's languages."""
    samples = self.samples(audio)
    with LOCK:
      features, _ = self.features(samples)
      return detect_language(self.model, self.window(features, 0))[0]
