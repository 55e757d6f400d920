"""Ranking a beam-search step's continuations on the host: the best few of rows x beams x vocabulary scores,
exactly as a full stable sort ranks them (ties: lower index first), without sorting them all."""
from __future__ import annotations

import numpy as np

CHUNK = 128   # continuations are pruned by chunks of this many tokens (best_continuations)


def largest(x: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k largest entries of each row, largest first (ties: lower index first)."""
  return np.argsort(-x, axis=1, kind="stable")[:, :k]

def best_continuations(lp: np.ndarray, running_scores: np.ndarray, cands: int) -> tuple[np.ndarray, np.ndarray]:
  """The `cands` best continuations of each batch row's k beams, best first (ties: lower index first): flat indices
  beam * vocab + token and their scores lp + the beam's running score, what `largest` ranks over every continuation
  of the row, without forming the (rows, k * vocab) sums. lp is (rows * k, vocab), running_scores (rows, k).

  Only chunks of CHUNK tokens can hold one whose best score reaches the cands-th best of the chunk maxima (those
  maxima are cands distinct scores, so the cands-th best score of all is at least that high), so only those chunks
  are gathered and ranked: for opus-mt's 58,101 tokens and beam 4, a few hundred scores per row instead of 232,404.
  A chunk's best score plus the running score is the best of its sums, float32 rounding being monotonic."""
  b, k = running_scores.shape
  vocab = lp.shape[1]
  full = vocab // CHUNK * CHUNK
  if k * vocab <= 4 * cands * CHUNK or np.isnan(lp).any():   # a small vocabulary (nothing to prune), or NaN scores
    acc = (lp.reshape(b, k, vocab) + running_scores[:, :, None]).reshape(b, k * vocab)
    best = largest(acc, cands)
    return best, np.take_along_axis(acc, best, 1)
  maxima = lp[:, :full].reshape(b * k, -1, CHUNK).max(-1)
  if full < vocab: maxima = np.concatenate([maxima, lp[:, full:].max(1, keepdims=True)], 1)
  chunks = maxima.shape[1]
  maxima = (maxima.reshape(b, k, chunks) + running_scores[:, :, None]).reshape(b, k * chunks)
  bar = -np.partition(-maxima, cands - 1, axis=1)[:, cands - 1]
  top, scores = np.empty((b, cands), np.int64), np.empty((b, cands), lp.dtype)
  offsets = np.arange(CHUNK)
  for r in range(b):
    picked = np.flatnonzero(maxima[r] >= bar[r])
    beam = picked // chunks
    tokens = (picked % chunks)[:, None] * CHUNK + offsets   # (picked, CHUNK); the last chunk may run past the vocabulary
    inside = tokens < vocab
    values = np.where(inside, lp[r * k + beam[:, None], np.minimum(tokens, vocab - 1)] + running_scores[r, beam][:, None], -np.inf)
    index = np.where(inside, beam[:, None] * vocab + tokens, k * vocab).ravel()   # outside: after every real index
    best = np.lexsort((index, -values.ravel()))[:cands]
    top[r], scores[r] = index[best], values.ravel()[best]
  return top, scores
