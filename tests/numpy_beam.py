"""A reference beam search in plain numpy over any next-token log-prob function, one source at a time, with lists of
hypotheses: what tfm's batched, KV-cached beam search is checked against. It follows Hugging Face's `generate`
semantics (transformers 4.50+), written from their description, not from tfm's code:

- each step scores every (live hypothesis, token) by summed log-prob and keeps the best 2 * beam_size candidates;
- a candidate that ends (eos, or the length limit) is kept as a finished hypothesis, scored sum / length**penalty,
  only if it ranks among the best beam_size candidates; the best beam_size candidates that do not end live on;
- at most beam_size finished hypotheses are kept (the best); with early_stopping=True none is added once that many
  are kept; and none is added any more once the best live hypothesis, scored at its current length (at max_len for
  early_stopping="never" with a positive penalty), cannot beat the worst kept one;
- the rules: suppressed tokens never, eos not before min_len tokens, only the forced token at the last step.
Scores are float32 sums, as in tfm and in PyTorch, so the same log-probs rank candidates the same way.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

LogProbs = Callable[[list[list[int]]], np.ndarray]  # prefixes (start token first) -> (len(prefixes), vocab) log-probs


def apply_rules(lp: np.ndarray, t: int, eos_id: int, max_len: int, min_len: int, forced_eos_id: int | None,
                suppress_ids: tuple[int, ...]) -> np.ndarray:
  """The log-probs of the token at 0-based output position t, after the generation rules."""
  lp = lp.astype(np.float32).copy()
  lp[:, list(suppress_ids)] = -np.inf
  if t < min_len: lp[:, eos_id] = -np.inf
  if forced_eos_id is not None and t == max_len - 1:
    lp[:] = -np.inf
    lp[:, forced_eos_id] = 0.0
  return lp


def beam_search(logprobs: LogProbs, start_id: int, eos_id: int, beam_size: int, max_len: int, length_penalty: float = 1.0,
                early_stopping: bool | str = True, min_len: int = 0, forced_eos_id: int | None = None,
                suppress_ids: tuple[int, ...] = (), num_return: int = 1) -> list[tuple[list[int], float]]:
  """The num_return best (tokens without the start token, score) for one source, best first."""
  live: list[tuple[list[int], np.float32]] = [([start_id], np.float32(0.0))]
  kept: list[tuple[np.float32, list[int]]] = []
  improvable = True
  for t in range(max_len):
    lp = apply_rules(logprobs([tokens for tokens, _ in live]), t, eos_id, max_len, min_len, forced_eos_id, suppress_ids)
    vocab = lp.shape[1]
    candidates = sorted(((np.float32(score + lp[i, v]), i * vocab + v) for i, (_, score) in enumerate(live) for v in range(vocab)),
                        key=lambda c: (-c[0], c[1]))[:2 * beam_size]
    full = early_stopping is True and len(kept) == beam_size
    next_live = []
    for rank, (score, flat) in enumerate(candidates):
      i, v = divmod(flat, vocab)
      tokens = live[i][0] + [v]
      if v == eos_id or t + 1 == max_len:
        if rank < beam_size and improvable and not full and score > -np.inf:
          kept.append((np.float32(score / np.float32((t + 1) ** length_penalty)), tokens))
      elif len(next_live) < beam_size: next_live.append((tokens, score))
    kept = sorted(kept, key=lambda h: -h[0])[:beam_size]
    live = next_live
    if len(kept) == beam_size and live:
      horizon = max_len if early_stopping == "never" and length_penalty > 0 else t + 1
      improvable = improvable and live[0][1] / np.float32(horizon ** length_penalty) > kept[-1][0]
    if not improvable or (early_stopping is True and len(kept) == beam_size) or t + 1 == max_len: break
  return [(tokens[1:], float(score)) for score, tokens in kept[:num_return]]

