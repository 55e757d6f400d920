"""Whisper decoding of one 30-second window, as transformers' WhisperForConditionalGeneration.generate decodes short-form
audio in one call (force_unique_generate_call: no seek to a later window, no temperature fallback).

The decoder starts from a prompt fed unscored (tfm.generate's decoder_prompt): [<|startofprev|> previous text] when
prompt_ids are given, then <|startoftranscript|> <|lang|> <|task|> and, without timestamps, <|notimestamps|> (an
English-only checkpoint has no language or task token). Generation starts after it: the checkpoint's suppress_tokens
are never generated, its begin_suppress_tokens never first, and returned ids and scores count generated tokens only.
With timestamps the timestamp rules apply (tfm.generation.rules.timestamps). A row whose language is not given is
detected first: one decoder step from <|startoftranscript|>, the most probable language token.

What a checkpoint needs is read from its generation_config (generation_config.json, `model.generation_config`):
decoder_start_token_id, eos_token_id, lang_to_id and task_to_id (multilingual checkpoints), no_timestamps_token_id
(timestamps; <|notimestamps|>), suppress_tokens, begin_suppress_tokens, max_initial_timestamp_index, is_multilingual,
prev_sot_token_id (prompt_ids), max_length.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tfm.errors import InputError
from tfm.generation.inputs import sources
from tfm.generation.search import generate
from tfm.generation.session import encoded, steps_at
from tfm.generation.settings import GenerationSettings, Timestamps
from tfm.io.whisper import cut
from tfm.runtime.memory import download, upload
from tfm.nn.transformer import Transformer

TASKS = ("transcribe", "translate")
SECONDS_PER_TIMESTAMP = 0.02   # <|0.02|> is one step after <|0.00|>


@dataclass(frozen=True)
class WhisperTokens:
  """A Whisper checkpoint's special tokens and decoding rules, from its generation_config. Language codes are bare
  ("en", not "<|en|>"); a field the checkpoint lacks is None (or empty)."""
  sot: int                          # <|startoftranscript|>: the decoder's start token
  eot: int                          # <|endoftext|>: eos
  no_timestamps: int | None         # <|notimestamps|>
  timestamp_begin: int | None       # <|0.00|>, no_timestamps + 1; the timestamps of 0.02 s steps follow it
  transcribe: int | None
  translate: int | None
  lang_to_id: dict[str, int]        # "en" -> the id of <|en|>
  suppress_ids: tuple[int, ...]
  begin_suppress_ids: tuple[int, ...]
  max_initial_timestamp_index: int | None
  prev_sot: int | None = None       # <|startofprev|>: the previous text's marker (prompt_ids)
  multilingual: bool = True
  max_length: int | None = None     # generation_config's max_length (decoder tokens, the prompt included)


@dataclass(frozen=True)
class WhisperOutput:
  """One row's decode: the generated ids (int32; no prompt, no eos; timestamps included where asked), the language
  code it was decoded as, and its score (sum of log-probs / length ** length_penalty, eos counted) when asked."""
  ids: np.ndarray
  language: str
  score: float | None = None


@dataclass(frozen=True)
class WhisperSegment:
  """A stretch of a window's decode between two timestamps: its start and end in seconds and its text ids (int32, the
  timestamp tokens left out)."""
  start: float
  end: float
  ids: np.ndarray


def whisper_tokens(model: Transformer) -> WhisperTokens:
  """The Whisper special tokens and rules of `model` (an imported Whisper checkpoint), from model.generation_config."""
  if not isinstance(model, Transformer) or not model.config.n_mels:
    raise InputError(f"whisper decoding needs a Whisper model (tfm.from_pretrained of a WhisperForConditionalGeneration "
                     f"folder), got {type(model).__name__}{'' if not isinstance(model, Transformer) else ' without an audio encoder'}")
  gc = getattr(model, "generation_config", None) or {}
  missing = [k for k in ("decoder_start_token_id", "eos_token_id") if not isinstance(gc.get(k), int)]
  multilingual = bool(gc.get("is_multilingual", "lang_to_id" in gc))
  if multilingual: missing += [k for k in ("lang_to_id", "task_to_id") if not isinstance(gc.get(k), dict)]
  if missing:
    raise InputError(f"the model's generation_config lacks {', '.join(missing)}, which Whisper decoding needs: load the checkpoint "
                     f"with its generation_config.json (a Whisper checkpoint's from the hub has them)")
  vocab = model.config.vocab_size
  lang_to_id = {k.strip("<|>"): int(v) for k, v in (gc.get("lang_to_id") or {}).items()}
  tasks = gc.get("task_to_id") or {}
  no_ts = gc.get("no_timestamps_token_id")
  if no_ts is not None and not 0 <= no_ts < vocab - 1:
    raise InputError(f"the model's generation_config has no_timestamps_token_id={no_ts}, which leaves no timestamp tokens in "
                     f"vocab_size={vocab}")
  return WhisperTokens(sot=gc["decoder_start_token_id"], eot=gc["eos_token_id"], no_timestamps=no_ts,
                       timestamp_begin=None if no_ts is None else no_ts + 1, transcribe=tasks.get("transcribe"),
                       translate=tasks.get("translate"), lang_to_id=lang_to_id,
                       suppress_ids=tuple(gc.get("suppress_tokens") or ()), begin_suppress_ids=tuple(gc.get("begin_suppress_tokens") or ()),
                       max_initial_timestamp_index=gc.get("max_initial_timestamp_index"), prev_sot=gc.get("prev_sot_token_id"),
                       multilingual=multilingual, max_length=gc.get("max_length"))


def detect_language(model: Transformer, features: Any) -> list[tuple[str, float]]:
  """Per row of log-mel features (B, n_mels, frames): the most probable language after <|startoftranscript|>, as
  transformers' detect_language picks it, and its probability among the language tokens (softmax over them alone)."""
  tokens = whisper_tokens(model)
  if not tokens.lang_to_id: raise InputError("this Whisper checkpoint is English-only (no lang_to_id): it has no language to detect")
  features, _ = sources(model, features)
  # the logits step (which greedy decoding with timestamps runs too), at position 0 from <|startoftranscript|>
  session = encoded(model, features, GenerationSettings(max_len=1, start_id=tokens.sot))
  steps = steps_at(session, 0, None)
  upload(session.feed, np.stack([np.full(len(features), tokens.sot), np.arange(len(features))]))
  steps.logits(0)
  codes, ids = zip(*sorted(tokens.lang_to_id.items(), key=lambda item: item[1]))   # by id: ties go to the lowest, as there
  x = download(session.logprobs)[:, list(ids)].astype(np.float64)
  p = np.exp(x - x.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  best = x.argmax(1)
  return [(codes[i], float(p[r, i])) for r, i in enumerate(best)]


def _languages(tokens: WhisperTokens, model: Transformer, features: np.ndarray, language: Any) -> list[str]:
  """Per row: the language code to decode as (detected where None; "en" for an English-only checkpoint)."""
  rows = len(features)
  if not tokens.multilingual:
    if language not in (None, "en") and not (isinstance(language, (list, tuple)) and set(language) <= {"en"}):
      raise InputError(f"language={language!r}: this Whisper checkpoint is English-only; leave language out (or 'en')")
    return ["en"] * rows
  given = [language] * rows if language is None or isinstance(language, str) else list(language)
  if len(given) != rows: raise InputError(f"language has {len(given)} entries for {rows} rows of features: give one per row, or one string")
  out = [code.lower().strip("<|>") if isinstance(code, str) else code for code in given]
  for code in out:
    if code is not None and code not in tokens.lang_to_id:
      raise InputError(f"unknown language {code!r} for this Whisper checkpoint; it knows {', '.join(sorted(tokens.lang_to_id))}")
  if None in out:
    detected = detect_language(model, features)
    out = [detected[r][0] if code is None else code for r, code in enumerate(out)]
  return out


def whisper_generate(model: Transformer, features: Any, language: Any = None, task: str = "transcribe", timestamps: bool = False,
                     beam_size: int | None = None, max_len: int | None = None, length_penalty: float | None = None,
                     prompt_ids: Any = None, return_scores: bool = False) -> list[WhisperOutput]:
  """Decode log-mel features (B, n_mels, frames) of one 30 s window each, as transformers' generate decodes short-form audio.

  language: a code ("en"), a list of one per row (None: detect that row's), or None to detect each row's; task:
  "transcribe" or "translate"; timestamps: generate timestamp tokens (<|0.00|>...) under the timestamp rules (cut them
  into segments with whisper_segments); beam_size, length_penalty: as tfm.generate (defaults from the
  generation_config: greedy, 1.0); max_len: generated tokens at most (default: the generation_config's max_length less
  the prompt, at most the decoder's positions less the prompt, as there); prompt_ids: previous text's token ids, fed
  after <|startofprev|> (added when the ids do not start with it) before <|startoftranscript|>.
  """
  tokens = whisper_tokens(model)
  features, _ = sources(model, features)
  if task not in TASKS: raise InputError(f"task={task!r}: choose 'transcribe' or 'translate'")
  if tokens.multilingual and (tokens.transcribe is None or tokens.translate is None):
    raise InputError("the model's generation_config task_to_id lacks 'transcribe' or 'translate'")
  if not tokens.multilingual and task != "transcribe": raise InputError("this Whisper checkpoint is English-only: it only transcribes")
  if tokens.no_timestamps is None and timestamps:
    raise InputError("timestamps=True needs the checkpoint's no_timestamps_token_id (generation_config.json): this one has none")
  languages = _languages(tokens, model, features, language)
  previous: list[int] = []
  if prompt_ids is not None:
    previous = [int(i) for i in prompt_ids]
    if tokens.prev_sot is None: raise InputError("prompt_ids need the checkpoint's prev_sot_token_id (<|startofprev|>): this one has none")
    if not previous or previous[0] != tokens.prev_sot: previous = [tokens.prev_sot, *previous]
  rows = []
  for code in languages:
    row = [*previous, tokens.sot]
    if tokens.multilingual: row += [tokens.lang_to_id[code], tokens.transcribe if task == "transcribe" else tokens.translate]
    if not timestamps and tokens.no_timestamps is not None: row.append(tokens.no_timestamps)
    rows.append(row)
  p, positions = len(rows[0]), model.config.max_len
  if max_len is None:
    max_len = positions - p if tokens.max_length is None else min(tokens.max_length + min(positions // 2 - 1, p), positions) - p
  elif p + max_len > positions:
    raise InputError(f"max_len={max_len} and a decoder prompt of {p} tokens exceed the decoder's {positions} positions: "
                     f"use max_len <= {positions - p}")
  rule = Timestamps(tokens.no_timestamps, tokens.max_initial_timestamp_index) if timestamps else None
  ids, scores = generate(model, features, max_len=max_len, beam_size=beam_size, length_penalty=length_penalty, return_scores=True,
                         decoder_prompt=rows, timestamps=rule, num_return=1, min_len=0, early_stopping=None)
  out = []
  for r, row in enumerate(ids):
    row = row[:np.argmax(row == tokens.eot)] if (row == tokens.eot).any() else row
    out.append(WhisperOutput(np.ascontiguousarray(row, np.int32), languages[r], float(scores[r]) if return_scores else None))
  return out


def whisper_segments(ids: Any, tokens: WhisperTokens, frames: int = 3000) -> list[WhisperSegment]:
  """A decode with timestamps (WhisperOutput.ids) cut into segments as transformers' generate cuts one window's decode
  (its `segments`, time offset 0): at each pair of timestamps; when the decode ends in text after a pair, that
  unfinished text is left out (a later window would decode it again); with no pair, one segment to the last timestamp
  (to the window's end, of `frames` log-mel frames, where there is none but <|0.00|>)."""
  if tokens.timestamp_begin is None: raise InputError("segments need the checkpoint's no_timestamps_token_id: this one has none")
  ids, begin = [int(i) for i in np.asarray(ids).reshape(-1)], tokens.timestamp_begin
  out = []
  for start, end, first, stop in cut(ids, begin, frames)[0]:   # tfm.io.whisper.cut: the one place windows are cut
    part = np.asarray(ids[first:stop], np.int64)
    out.append(WhisperSegment(start * SECONDS_PER_TIMESTAMP, end * SECONDS_PER_TIMESTAMP, part[part < begin].astype(np.int32)))
  return out
