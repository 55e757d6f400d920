"""The float64 oracle's own decoding, and a backend's token ids judged against it: identical, a near tie, or different.

Greedy decoding and beam search here run on tfm.reference (numpy, float64), never on tfm's generation code. The beam
search follows Hugging Face's `generate` semantics (transformers 4.50+), written from their description:
- each step scores every (live hypothesis, token) by summed log-prob and keeps the best 2 * beam_size candidates;
- a candidate that ends (eos, or the length limit) is kept as a finished hypothesis, scored sum / length**penalty,
  only if it ranks among the best beam_size candidates; the best beam_size candidates that do not end live on;
- at most beam_size finished hypotheses are kept (the best); with early_stopping=True none is added once that many
  are kept; and none is added any more once the best live hypothesis, scored at its current length (at max_len for
  early_stopping="never" with a positive penalty), cannot beat the worst kept one;
- the rules: suppressed tokens never, eos not before min_len tokens, only the forced token at the last step.
Scores are float32 sums, as in tfm and in PyTorch, so the same log-probs rank candidates the same way.

A near tie: a backend may be off by the tolerance in every logit, so where the oracle's best and the backend's choice
are within TIE_FACTOR x the tolerance of each other, either choice is right. Ids that differ first at such a choice
are a tie, shown as one; any other difference fails.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tfm.config import TransformerConfig
from tfm.reference import Reference

TIE_FACTOR = 2.0
LogProbs = Callable[[list[list[int]]], np.ndarray]  # prefixes (start token first) -> (len(prefixes), vocab) log-probs


def log_softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def next_token_logprobs(ref: Reference, src_row: np.ndarray) -> LogProbs:
  """The oracle's next-token log-probs for one source, given prefixes of equal length."""
  return lambda prefixes: log_softmax(ref.logits(np.repeat(src_row[None], len(prefixes), 0), np.array(prefixes))[:, -1])


def greedy(ref: Reference, config: TransformerConfig, src: np.ndarray, max_len: int,
           margins: list | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Greedy decoding as tfm.generate returns it: ids (argmax of the last position, finished rows padded, cut to the
  longest row) and scores (mean log-probability of each row's tokens, eos counted). `margins` collects each step's
  smallest gap between the best and the second-best logit of the rows still decoding."""
  rows = src.shape[0]
  tgt, done = np.full((rows, 1), config.start_id), np.zeros(rows, bool)
  total, length = np.zeros(rows), np.zeros(rows)
  for _ in range(max_len):
    logits = ref.logits(src, tgt)[:, -1]
    if margins is not None:
      top2 = np.sort(logits, -1)[:, -2:]
      margins.append(float((top2[:, 1] - top2[:, 0])[~done].min()))
    best = logits.argmax(-1)
    total += np.where(done, 0.0, log_softmax(logits)[np.arange(rows), best])
    length += ~done
    best = np.where(done, config.pad_id, best)
    tgt = np.concatenate([tgt, best[:, None]], 1)
    done |= best == config.eos_id
    if done.all(): break
  return tgt[:, 1:], total / length


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


def beam(ref: Reference, config: TransformerConfig, src: np.ndarray, beam_size: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """The oracle's beam search with tfm.generate's default settings: the best hypothesis per source as ids (padded,
  cut to the longest row) and scores."""
  best = [beam_search(next_token_logprobs(ref, row), config.start_id, config.eos_id, beam_size, max_len)[0] for row in src]
  ids = np.full((len(best), max(len(tokens) for tokens, _ in best)), config.pad_id)
  for r, (tokens, _) in enumerate(best): ids[r, :len(tokens)] = tokens
  return ids, np.array([score for _, score in best])


def _tokens(row: np.ndarray, eos_id: int) -> list[int]:
  """A decoded row up to and including its eos."""
  row = [int(t) for t in row]
  return row[:row.index(eos_id) + 1] if eos_id in row else row


def _score(logprobs: LogProbs, start_id: int, tokens: list[int]) -> float:
  """Mean log-probability of `tokens` under the oracle (beam search's score with length penalty 1)."""
  lp = [logprobs([[start_id] + tokens[:t]])[0, tok] for t, tok in enumerate(tokens)]
  return float(np.mean(lp))


def judge(ref: Reference, config: TransformerConfig, src: np.ndarray, key: str, got: np.ndarray, want: np.ndarray,
          tolerance: float) -> str | None:
  """Where a backend's ids (`key`: "greedy" or "beam") differ from the oracle's, a description of the near tie that
  explains it ("row 0, token 17: oracle's 6 vs 5, 3.7e-03 apart"); None when they differ by more than a tie."""
  ties, tie = [], TIE_FACTOR * tolerance
  for r, (mine, theirs) in enumerate(zip(got, want)):
    mine, theirs = _tokens(mine, config.eos_id), _tokens(theirs, config.eos_id)
    if mine == theirs: continue
    logprobs = next_token_logprobs(ref, src[r])
    if key == "beam":   # hypotheses are ranked by score: a tie when the backend's scores as well as the oracle's
      apart = _score(logprobs, config.start_id, theirs) - _score(logprobs, config.start_id, mine)
      if apart > tie: return None
      ties.append(f"row {r}: scores {apart:.1e} apart")
      continue
    t = next(i for i, (a, b) in enumerate(zip(mine + [-1], theirs + [-1])) if a != b)
    if t >= min(len(mine), len(theirs)): return None   # a row cut short without eos: no choice between two tokens there
    logits = ref.logits(src[r:r + 1], np.array([[config.start_id] + theirs[:t]]))[0, -1]
    apart = float(logits[theirs[t]] - logits[mine[t]])
    if apart > tie: return None
    ties.append(f"row {r}, token {t}: oracle's {theirs[t]} vs {mine[t]}, {apart:.1e} apart")
  if not ties: return "the same tokens up to each row's eos (only the padding after it differs)"
  return "; ".join(ties) + f" (a tie: within {TIE_FACTOR:g} x tolerance)"


def decodings(ref: Reference, config: TransformerConfig, src: np.ndarray, max_len: int, beam_size: int,
              tolerance: float) -> tuple[dict[str, np.ndarray], Callable[[str, np.ndarray], str | None]]:
  """The oracle's greedy and beam ids for `src` ({"greedy", "beam"}, as tfm compare's steps name them), and the judge
  of a backend's ids that differ from them (backends.compare's `judge`)."""
  want = {"greedy": greedy(ref, config, src, max_len)[0], "beam": beam(ref, config, src, beam_size, max_len)[0]}
  return want, lambda key, got: judge(ref, config, src, key, got, want[key], tolerance) if key in want else None
