"""The decoding rules that depend on what each hypothesis has produced so far, applied on the host to a step's scores
(logits for greedy decoding and sampling, log-probs for beam search, as Hugging Face's logits processors are), and
sampling. The rules that do not (min_len, suppressed tokens, the forced eos) run on the device (session.py).

- repetition_penalty p: each token already in the hypothesis (the decoder start token included) has its score
  divided by p where it is positive, multiplied by p where it is negative (CTRL's penalty, Hugging Face's formula).
- no_repeat_ngram_size n: a token that would repeat an n-gram of the hypothesis (start token included) is banned.
- bad_words: token sequences never generated: the last token of one is banned where the hypothesis ends with the
  rest of it (single tokens are suppress_ids, on the device).
- target_prefix: a row's first tokens are forced (each keeps its log-prob), then decoding goes on from them.
- timestamps (Whisper): the rules of transformers' WhisperTimeStampLogitsProcessor, applied after the suppressed tokens,
  on what the row generated after its decoder prompt: <|notimestamps|> is never generated; timestamps come in pairs
  (after two, text; after one that follows text, a timestamp or eos); they never go back (nor repeat, but for the
  second of a pair); the first token is a timestamp, at most max_initial_index steps in; and where the timestamps'
  total probability beats the most probable text token, the token is a timestamp. They run on the host because they
  read each row's history (the last two tokens and the last timestamp) and take a per-row decision over the whole
  vocabulary: as data-dependent as the other rules here, and cheap beside a decoder step.
- sampling: scores / temperature, the top_k best kept, then the smallest set whose probability reaches top_p, and a
  token drawn from the renormalised rest with a numpy generator seeded by `seed`: the same on every backend.
"""
from __future__ import annotations

import numpy as np

from tfm.generation.settings import GenerationSettings


def active(s: GenerationSettings) -> bool:
  """Do these settings need the host rules (or sampling)?"""
  return (s.repetition_penalty != 1.0 or s.no_repeat_ngram_size > 0 or bool(s.bad_words) or s.sample
          or s.timestamps is not None)


def apply(scores: np.ndarray, history: np.ndarray, s: GenerationSettings) -> np.ndarray:
  """scores (N, V) after the rules that depend on each row's history (N, t + 1), start token first."""
  scores = scores.copy()
  if s.repetition_penalty != 1.0:
    for row, seen in zip(scores, history):
      seen = np.unique(seen)
      row[seen] = np.where(row[seen] < 0, row[seen] * s.repetition_penalty, row[seen] / s.repetition_penalty)
  n, length = s.no_repeat_ngram_size, history.shape[1]
  if n > 0 and length + 1 >= n:
    for row, h in zip(scores, history):
      tail = tuple(h[length - n + 1:])
      banned = [h[i + n - 1] for i in range(length - n + 1) if tuple(h[i:i + n - 1]) == tail]
      row[banned] = -np.inf
  for words in s.bad_words:
    prefix = np.asarray(words[:-1])
    if len(prefix) > length: continue
    ends = (history[:, length - len(prefix):] == prefix).all(1) if len(prefix) else np.ones(len(history), bool)
    scores[ends, words[-1]] = -np.inf
  return scores


def timestamps(scores: np.ndarray, generated: np.ndarray, s: GenerationSettings, eos_id: int) -> np.ndarray:
  """scores (N, V) after Whisper's timestamp rules (module doc), given each row's generated tokens (N, t) (the decoder
  prompt left out); scores itself when s has no timestamp rules."""
  if s.timestamps is None: return scores
  begin, scores = s.timestamps.begin, scores.copy()
  scores[:, s.timestamps.no_timestamps_id] = -np.inf
  for row, seq in zip(scores, generated):
    last = len(seq) >= 1 and seq[-1] >= begin
    penultimate = len(seq) < 2 or seq[-2] >= begin
    if last and penultimate: row[begin:] = -np.inf      # after a pair: text
    elif last: row[:eos_id] = -np.inf                   # after text and one timestamp: a timestamp or eos
    stamps = seq[seq >= begin]
    lowest = begin if not len(stamps) else stamps[-1] if last and not penultimate else stamps[-1] + 1
    row[begin:lowest] = -np.inf   # never back in time (nor the same again, but to close a pair)
  if generated.shape[1] == 0:   # the first token is a timestamp, and an early one
    scores[:, :begin] = -np.inf
    if s.timestamps.max_initial_index is not None: scores[:, begin + s.timestamps.max_initial_index + 1:] = -np.inf
  with np.errstate(invalid="ignore", divide="ignore"):
    x = scores.astype(np.float32)
    top = x.max(1, keepdims=True)
    logprobs = x - (top + np.log(np.exp(x - top).sum(1, keepdims=True)))
    stamp_top = logprobs[:, begin:].max(1, keepdims=True)
    stamp_mass = (stamp_top + np.log(np.exp(logprobs[:, begin:] - stamp_top).sum(1, keepdims=True)))[:, 0]
    scores[stamp_mass > logprobs[:, :begin].max(1), :begin] = -np.inf
  return scores


def force_prefix(scores: np.ndarray, t: int, prefixes: list[list[int]] | None, rows_per_source: int = 1) -> np.ndarray:
  """Rows whose target prefix reaches output position t keep only that prefix token's score (N = sources x rows each)."""
  if not prefixes: return scores
  scores = scores.copy()
  for i, prefix in enumerate(prefixes):
    if t < len(prefix):
      rows = slice(i * rows_per_source, (i + 1) * rows_per_source)
      kept = scores[rows, prefix[t]].copy()
      scores[rows] = -np.inf
      scores[rows, prefix[t]] = kept
  return scores


def sample(logits: np.ndarray, s: GenerationSettings, rng: np.random.Generator) -> np.ndarray:
  """One token per row drawn from softmax(logits / temperature) restricted to its top_k and top_p nucleus."""
  x = logits.astype(np.float64) / s.temperature
  if 0 < s.top_k < x.shape[1]:
    kth = np.partition(x, -s.top_k, axis=1)[:, [-s.top_k]]   # each row's k-th largest
    x = np.where(x < kth, -np.inf, x)
  p = np.exp(x - x.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  if s.top_p < 1.0:
    order = np.argsort(-p, axis=1, kind="stable")
    sorted_p = np.take_along_axis(p, order, 1)
    outside = np.cumsum(sorted_p, 1) - sorted_p >= s.top_p   # tokens after the nucleus has reached top_p
    np.put_along_axis(p, order, np.where(outside, 0.0, sorted_p), 1)
    p /= p.sum(1, keepdims=True)
  return np.array([rng.choice(len(row), p=row) for row in p], np.int32)
