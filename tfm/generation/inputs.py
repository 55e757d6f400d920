"""The checked inputs of a decode: sources (token ids, or an audio model's log-mel features), per-source target
prefixes and decoder prompts, and the resolved settings; each refused by name when it does not fit the model."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tfm.errors import InputError
from tfm.generation.settings import GenerationSettings, check, resolve_settings
from tfm.nn.transformer import Transformer


def sources(model: Transformer, src_ids: Any) -> tuple[np.ndarray, np.ndarray]:
  """Checked source ids (B, S) on the host, and each row's length without padding."""
  if not isinstance(model, Transformer): raise InputError(f"model must be a tfm.Transformer, got {type(model).__name__}")
  if model.config.n_mels:   # an audio encoder's log-mel features: every frame is real
    features = model.check_source(src_ids, "features")
    return features, np.full(len(features), model.config.source_positions)
  src = model.check_ids(src_ids, "src_ids")
  lengths = (src != model.config.pad_id).sum(1)
  if (lengths == 0).any():
    raise InputError(f"src_ids row {int(np.argmin(lengths))} holds only pad tokens (pad_id={model.config.pad_id}): "
                     f"give every row at least one token, or leave the empty ones out")
  return src, lengths

def target_prefixes(model: Transformer, target_prefix: Any, rows: int, max_len: int) -> list[list[int]] | None:
  """Checked per-row target prefixes (token ids, no eos needed), or None."""
  if target_prefix is None: return None
  prefixes = [[] if p is None else [int(i) for i in p] for p in target_prefix]
  if len(prefixes) != rows:
    raise InputError(f"target_prefix has {len(prefixes)} entries for {rows} sources: give one per source (None or [] for none)")
  for i, p in enumerate(prefixes):
    if len(p) >= max_len: raise InputError(f"target_prefix {i} has {len(p)} tokens, max_len={max_len} leaves no room after it")
    bad = [x for x in p if not 0 <= x < model.config.vocab_size]
    if bad: raise InputError(f"target_prefix {i} has token id {bad[0]}, out of range for vocab_size={model.config.vocab_size}")
  return prefixes if any(prefixes) else None

def decoder_prompts(model: Transformer, decoder_prompt: Any, rows: int, max_len: int, start_id: int) -> np.ndarray:
  """Checked decoder prompts (B, P) int32, one per source and all of one length; without one, each row's start token
  (B, 1)."""
  if decoder_prompt is None: return np.full((rows, 1), start_id, np.int32)
  try: prompt = np.array([[int(i) for i in row] for row in decoder_prompt], np.int32)
  except (TypeError, ValueError): raise InputError("decoder_prompt must be one list of token ids per source, all of one length "
                                                   "(a (batch, P) array)") from None
  if prompt.ndim != 2 or prompt.shape[0] != rows or prompt.shape[1] == 0:
    raise InputError(f"decoder_prompt has shape {prompt.shape} for {rows} sources: give one non-empty row per source, all of one length")
  bad = prompt[(prompt < 0) | (prompt >= model.config.vocab_size)]
  if bad.size: raise InputError(f"decoder_prompt has token id {bad[0]}, out of range for vocab_size={model.config.vocab_size}")
  if prompt.shape[1] - 1 + max_len > model.config.max_len:
    raise InputError(f"a decoder prompt of {prompt.shape[1]} tokens and max_len={max_len} need {prompt.shape[1] - 1 + max_len} "
                     f"decoder positions, more than config.max_len={model.config.max_len}: lower max_len or shorten the prompt")
  return prompt

def checked_settings(model: Transformer, src: np.ndarray, lengths: np.ndarray, bad_words: Any, target_prefix: Any,
              **given: Any) -> tuple[GenerationSettings, list[list[int]] | None]:
  """The resolved settings (single-token bad words joined to suppress_ids) and the checked target prefixes."""
  words = None if bad_words is None else [tuple(int(i) for i in w) for w in bad_words]
  if words is not None:
    if any(len(w) == 0 for w in words): raise InputError("bad_words has an empty sequence: give each as one or more token ids")
    given["bad_words"] = tuple(w for w in words if len(w) > 1)
  s = resolve_settings(model, lengths, **given)
  if words: s = check(dataclasses.replace(s, suppress_ids=tuple(sorted(set(s.suppress_ids) | {w[0] for w in words if len(w) == 1}))),
                      model.config)
  return s, target_prefixes(model, target_prefix, src.shape[0], s.max_len)
