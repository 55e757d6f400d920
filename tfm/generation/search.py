"""Search: greedy decoding (its state kept on the device) and beam search (hypotheses kept on the host, in Hugging
Face's order of operations), over a session's compiled steps; and the public functions that run them."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tfm.errors import InputError
from tfm.generation import rules
from tfm.generation.inputs import checked_settings, decoder_prompts, sources
from tfm.generation.ranking import best_continuations, largest
from tfm.generation.session import Session, Steps, encoded, steps_at
from tfm.generation.settings import GenerationSettings, Timestamps, forced, rule_arrays
from tfm.runtime.memory import download, host_view, upload
from tfm.nn.transformer import Transformer

CHECK_EVERY = 4        # greedy decoding asks "all rows finished?" every this many steps (every step where that is free)


def lengths_to_eos(ids: np.ndarray, eos_id: int) -> np.ndarray:
  """Each row's generated length (B,): up to and including its first eos, the whole row where it has none."""
  is_eos = np.asarray(ids) == eos_id
  return np.where(is_eos.any(1), is_eos.argmax(1) + 1, is_eos.shape[1])


def _all_ended(steps: Steps, pos: int, eos: int, first: int = 1) -> bool:
  """Has every row of a greedy decode produced eos by position pos (its outputs start at trace slot `first`)? Asked
  every step where the device memory is host memory (a look, no copy), every CHECK_EVERY steps elsewhere (a copy and a
  sync)."""
  if (trace := host_view(steps.trace)) is None:
    if (pos + 1) % CHECK_EVERY: return False
    trace = download(steps.trace)
  return bool((trace[0, :, first:pos + 2] == eos).any(1).all())

def _greedy_steps(session: Session, pos: int, steps: Steps | None, prompt: np.ndarray) -> Steps:
  """The greedy steps for position pos (steps_at), their trace holding the decoder prompt (N, P) while pos is in it:
  a step writes its own choice at pos + 1, so before each prompt position the trace is written again with the prompt.
  The prompt's positions run the same compiled step as the rest; their outputs are not used."""
  steps = steps_at(session, pos, steps)
  if pos < prompt.shape[1]:
    trace = np.zeros(steps.trace.shape, np.float32)
    trace[0, :, :pos + 1] = prompt[:, :pos + 1]
    upload(steps.trace, trace)
  return steps

def _greedy(session: Session, s: GenerationSettings, prompt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Greedy decoding with its state on the device; the host only asks now and then whether all rows are done."""
  eos, pad = session.model.config.eos_id, session.model.config.pad_id
  p = prompt.shape[1]
  steps, done_at = None, s.max_len
  for pos in range(p - 1 + s.max_len):
    steps = _greedy_steps(session, pos, steps, prompt)
    steps.greedy(pos)
    if pos >= p - 1 and _all_ended(steps, pos, eos, p):
      done_at = pos + 2 - p
      break
  trace = download(steps.trace)[:, :, p:p + done_at]
  ids, logprobs = trace[0].astype(np.int32), trace[1]
  lengths = lengths_to_eos(ids, eos)
  after = np.arange(done_at) >= lengths[:, None]
  ids[after] = pad
  return ids, np.where(after, np.float32(0), logprobs).sum(1, dtype=np.float32), lengths

def _greedy_tokens(session: Session, s: GenerationSettings, prompt: np.ndarray):
  """Greedy decoding as _greedy runs it from a one-token prompt (the start token), reading each step's tokens back as
  it goes: yields (B,) int32 ids per step, pad for rows that have already ended, until every row has ended or max_len
  is reached."""
  eos, pad = session.model.config.eos_id, session.model.config.pad_id
  steps, ended = None, np.zeros(session.rows, bool)
  for pos in range(s.max_len):
    steps = _greedy_steps(session, pos, steps, prompt)
    steps.greedy(pos)
    view = host_view(steps.trace)
    ids = (view[0, :, pos + 1] if view is not None else download(steps.trace)[0, :, pos + 1]).astype(np.int32)
    yield np.where(ended, pad, ids)
    ended |= ids == eos
    if ended.all(): return

def _fill_prompt(session: Session, prompt: np.ndarray, step: str) -> Steps | None:
  """Run the decoder over a prompt's first P - 1 tokens (N, P), through the named compiled step that reads the feed
  ("logits" or "beam"): their keys and values fill the caches, their outputs are not used."""
  steps = None
  for pos in range(prompt.shape[1] - 1):
    steps = steps_at(session, pos, steps)
    upload(session.feed, np.stack([prompt[:, pos], np.arange(len(prompt))]))
    getattr(steps, step)(pos)
  return steps

def _host_steps(session: Session, s: GenerationSettings, prefixes: list[list[int]] | None, prompt: np.ndarray):
  """Greedy decoding or sampling with rules that depend on each row's tokens: the device computes the logits, the
  host applies the rules to them (then the device's own rules, in Hugging Face's order) and picks or draws the token.
  Yields each step's (tokens (B,), their log-probs (B,)), pad and 0 for rows that have ended, until all have. A
  token's log-prob is taken as the device's greedy step takes it: its ruled logit minus the raw logits' logsumexp."""
  c = session.model.config
  n, eos, pad = session.rows, c.eos_id, c.pad_id
  rule_at, bias = rule_arrays(s, c)
  rng = np.random.default_rng(s.seed)
  history = prompt.copy()
  p = history.shape[1]
  ended, steps = np.zeros(n, bool), _fill_prompt(session, history, "logits")
  for t in range(s.max_len):
    steps = steps_at(session, p - 1 + t, steps)
    upload(session.feed, np.stack([history[:, -1], np.arange(n)]))
    steps.logits(p - 1 + t)
    raw = download(session.logprobs)
    row = bias[rule_at[t]]   # the position's rule (settings.rule_arrays): a forced row replaces the scores, others add
    x = (np.broadcast_to(row, raw.shape).copy() if forced(rule_at[t]) else
         rules.timestamps(rules.apply(raw, history, s) + row, history[:, p:], s, eos))
    x = rules.force_prefix(x, t, prefixes)
    if (stuck := ~ended & np.isneginf(x).all(1)).any():
      raise InputError(f"the decoding rules leave no token for row {int(np.argmax(stuck))} at output position {t} (every "
                       f"one is banned by no_repeat_ngram_size, bad_words, suppress_ids or min_len together); loosen them")
    chosen = rules.sample(x, s, rng) if s.sample else x.argmax(1).astype(np.int32)
    top = raw.max(1)
    lse = top + np.log(np.exp(raw - top[:, None]).sum(1, dtype=np.float32))
    lp = np.full(n, np.float32(0)) if forced(rule_at[t]) else x[np.arange(n), chosen] - lse
    tokens, lp = np.where(ended, pad, chosen).astype(np.int32), np.where(ended, np.float32(0), lp).astype(np.float32)
    yield tokens, lp
    ended |= chosen == eos
    history = np.concatenate([history, tokens[:, None]], 1)
    if ended.all(): return

def _host_greedy(session: Session, s: GenerationSettings, prefixes: list[list[int]] | None,
                 prompt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """_host_steps' tokens as greedy_search returns them: ids, summed log-probs, lengths."""
  tokens, logprobs = zip(*_host_steps(session, s, prefixes, prompt))
  ids = np.stack(tokens, 1)
  return ids, np.stack(logprobs, 1).sum(1, dtype=np.float32), lengths_to_eos(ids, session.model.config.eos_id)

def _beam_search(session: Session, s: GenerationSettings, prefixes: list[list[int]] | None,
                 prompt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Beam search: the device computes each step's log-probs, the host keeps the hypotheses, in float32 sums and
  Hugging Face's order of operations, so that the same log-probs select the same hypotheses as there. The rules that
  depend on the hypotheses (tfm.generation.rules) apply to the log-probs, as Hugging Face's beam search applies them.
  A decoder prompt (B, P) fills the caches first; lengths and the length penalty count the generated tokens only."""
  c = session.model.config
  host, rule_at = rules.active(s) or bool(prefixes), rule_arrays(s, c)[0]
  b, k, vocab, max_len = session.rows, s.beam_size, c.vocab_size, s.max_len
  cands = 2 * k  # enough that k continue even when k of them end in eos
  f32 = np.float32
  never = f32(-1e9)
  running = np.full((b, k, max_len), c.pad_id, np.int32)
  running_scores = np.zeros((b, k), f32)
  running_scores[:, 1:] = never  # all beams start equal: expand the first one only
  done = np.full((b, k, max_len), c.pad_id, np.int32)
  done_scores, done_lengths = np.full((b, k), never, f32), np.zeros((b, k), np.int64)
  is_done = np.zeros((b, k), bool)
  improvable = np.ones(b, bool)  # can a live beam still beat the worst kept hypothesis?
  prompt = np.repeat(prompt, k, 0)   # (b * k, P)
  p = prompt.shape[1]
  steps = _fill_prompt(session, prompt, "beam")
  tokens, origin = prompt[:, -1], np.arange(b * k)
  for t in range(max_len):
    steps = steps_at(session, p - 1 + t, steps)
    upload(session.feed, np.stack([tokens, origin]))
    steps.beam(p - 1 + t)
    # read in place where the device is host memory (CPU): the next step rewrites the buffer, after this one is ranked;
    # a copy where the host's rules change the scores
    lp = view if not host and (view := host_view(session.logprobs)) is not None else download(session.logprobs)
    if host:   # not at a forced step: there the device already left the forced token alone, as Hugging Face's processors do
      history = np.concatenate([prompt, running[:, :, :t].reshape(b * k, t)], 1)
      if not forced(rule_at[t]): lp = rules.timestamps(rules.apply(lp, history, s), history[:, p:], s, c.eos_id)
      lp = rules.force_prefix(lp, t, prefixes, k)
    top, top_scores = best_continuations(lp, running_scores, cands)
    beam_of, token = top // vocab, top % vocab
    grown = np.take_along_axis(running, beam_of[:, :, None], 1)  # (b, cands, max_len)
    grown[:, :, t] = token
    ends = (token == c.eos_id) | (t + 1 >= max_len)
    # the k best that did not end go on
    live_scores = top_scores + ends.astype(f32) * never
    keep = largest(live_scores, k)
    running = np.take_along_axis(grown, keep[:, :, None], 1)
    running_scores = np.take_along_axis(live_scores, keep, 1)
    tokens = np.take_along_axis(token, keep, 1).reshape(-1)
    origin = (np.take_along_axis(beam_of, keep, 1) + np.arange(b)[:, None] * k).reshape(-1)
    # those that ended among the top k join the kept hypotheses if they beat them
    ended = ends & (np.arange(cands) < k)
    scores = top_scores / ((t + 1) ** s.length_penalty)
    scores += (is_done.all(1, keepdims=True) & (s.early_stopping is True)).astype(f32) * never
    scores += (~improvable[:, None]).astype(f32) * never
    scores += (~ended).astype(f32) * never
    merged = np.concatenate([done_scores, scores], 1)
    best = largest(merged, k)
    done = np.take_along_axis(np.concatenate([done, grown], 1), best[:, :, None], 1)
    done_scores = np.take_along_axis(merged, best, 1)
    done_lengths = np.take_along_axis(np.concatenate([done_lengths, np.full((b, cands), t + 1)], 1), best, 1)
    is_done = np.take_along_axis(np.concatenate([is_done, ended], 1), best, 1)
    horizon = max_len if s.early_stopping == "never" and s.length_penalty > 0 else t + 1
    best_possible = running_scores[:, :1] / (horizon ** s.length_penalty)
    worst_kept = np.where(is_done, done_scores.min(1, keepdims=True), never)
    improvable &= (best_possible > worst_kept).any(1)
    if not improvable.any() or (is_done.all() and s.early_stopping is True) or ends.all(): break
  r = s.num_return
  return (done[:, :r].reshape(b * r, max_len), done_scores[:, :r].reshape(-1),
          done_lengths[:, :r].reshape(-1))

def _search(model: Transformer, src_ids: Any, method: str, return_scores: bool, bad_words: Any = None,
            target_prefix: Any = None, decoder_prompt: Any = None, **given: Any):
  """Check the inputs, encode, then decode with `method`: "greedy", "beam", or "auto" (greedy for one beam)."""
  src, lengths = sources(model, src_ids)
  s, prefixes = checked_settings(model, src, lengths, bad_words, target_prefix, **given)
  prompt = decoder_prompts(model, decoder_prompt, src.shape[0], s.max_len, s.start_id)
  greedy = method == "greedy" or (method == "auto" and s.beam_size == 1)
  if greedy: s = dataclasses.replace(s, beam_size=1, num_return=1)
  session = encoded(model, src, s, prompt.shape[1])
  if greedy:
    if rules.active(s) or prefixes: ids, sums, lengths = _host_greedy(session, s, prefixes, prompt)
    else: ids, sums, lengths = _greedy(session, s, prompt)
    scores = sums / lengths.astype(np.float32) ** s.length_penalty
  else: ids, scores, lengths = _beam_search(session, s, prefixes, prompt)
  ids = np.ascontiguousarray(ids[:, :int(lengths.max())])
  return (ids, scores.astype(np.float32)) if return_scores else ids

def generate_tokens(model: Transformer, src_ids: Any, max_len: int | None = None, min_len: int | None = None, **rules_given: Any):
  """Greedy decoding (or sampling) of a batch (B, S) that yields each step's tokens as soon as they are decoded:
  (B,) int32 ids per step, the same ids `generate` returns column by column for beam_size 1 (pad once a row has
  ended, eos included where it ends). Keyword arguments: generate's decoding rules (repetition_penalty,
  no_repeat_ngram_size, bad_words, target_prefix, sample, temperature, top_k, top_p, seed). For streaming a
  translation as it is produced; each step waits for the device, so it is slower than generate."""
  src, lengths = sources(model, src_ids)
  bad_words, target_prefix = rules_given.pop("bad_words", None), rules_given.pop("target_prefix", None)
  s, prefixes = checked_settings(model, src, lengths, bad_words, target_prefix, max_len=max_len, min_len=min_len, **rules_given)
  s = dataclasses.replace(s, beam_size=1, num_return=1)
  session, start = encoded(model, src, s), decoder_prompts(model, None, len(src), s.max_len, s.start_id)
  if rules.active(s) or prefixes: yield from (tokens for tokens, _ in _host_steps(session, s, prefixes, start))
  else: yield from _greedy_tokens(session, s, start)

def incremental_logprobs(model: Transformer, src_ids: Any, tgt_ids: Any) -> np.ndarray:
  """Teacher forcing through the KV-cache decode step: log-probs (B, T, vocab_size) of the token after each target
  prefix, computed one position at a time as generation computes them (no generation rules). The same numbers as
  `model(src_ids, tgt_ids).log_softmax(-1)` up to float32 rounding: a check of the cache, and a way to score targets."""
  src, _ = sources(model, src_ids)
  tgt = model.check_ids(tgt_ids, "tgt_ids")
  if tgt.shape[0] != src.shape[0]:
    raise InputError(f"src_ids has batch size {src.shape[0]} but tgt_ids has {tgt.shape[0]}: give one target row per source row")
  session = encoded(model, src, GenerationSettings(max_len=tgt.shape[1], start_id=model.config.start_id))
  steps, out = None, []
  for t in range(tgt.shape[1]):
    steps = steps_at(session, t, steps)
    upload(session.feed, np.stack([tgt[:, t], np.arange(src.shape[0])]))
    steps.beam(t)
    out.append(download(session.logprobs))
  return np.stack(out, 1)

def generate(model: Transformer, src_ids: Any, max_len: int | None = None, beam_size: int | None = None,
             length_penalty: float | None = None, early_stopping: bool | str | None = None, min_len: int | None = None,
             num_return: int | None = None, return_scores: bool = False, *, repetition_penalty: float | None = None,
             no_repeat_ngram_size: int | None = None, bad_words: Any = None, target_prefix: Any = None,
             sample: bool | None = None, temperature: float | None = None, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, forced_bos_id: int | None = None, start_id: int | None = None,
             decoder_prompt: Any = None, timestamps: Timestamps | None = None):
  """Translate a batch of sources (B, S), pad-padded to a common length: ids (B * num_return, T) [and scores].

  Arguments left as None take tfm's defaults: beam_size 1 (greedy), max_len = longest source + 50 (at most
  config.max_len), length_penalty 1.0, early_stopping True, min_len 0, num_return 1; or, for a model that carries a
  `generation_config` dict (an imported checkpoint), that dict's values with Hugging Face's defaults for the keys it
  leaves out. The module doc gives the conventions for ids, scores and lengths.

  The rules that depend on what each hypothesis has produced (tfm.generation.rules): repetition_penalty,
  no_repeat_ngram_size, bad_words (token sequences never generated; single tokens join suppress_ids),
  target_prefix (per source: token ids its output starts with, or None), and sampling (sample=True with temperature,
  top_k, top_p; seed makes it repeatable on every backend). The first four are Hugging Face's; as there, they apply
  to the logits in greedy decoding and to the log-probs in beam search.

  forced_bos_id: the first output token, forced with log-prob 0 (a multilingual model's target language: NLLB, M2M100,
  mBART-50); start_id: the decoder's first input (mBART's target language). Both default to the generation_config's
  forced_bos_token_id and decoder_start_token_id, else none and config.start_id.

  decoder_prompt: per source, the decoder's first inputs (all rows of one length P; the start token is the first of
  them, start_id is then unused), fed unscored as transformers' decoder_input_ids are: their positions fill the KV
  cache and decoding starts after them; returned ids, scores, lengths, max_len, min_len and the rules count only the
  generated tokens (Whisper's <|startoftranscript|> <|lang|> <|task|>, tfm.generation.whisper). timestamps: Whisper's
  timestamp rules (settings.Timestamps; rules.timestamps).
  """
  return _search(model, src_ids, "auto", return_scores, bad_words, target_prefix, decoder_prompt, timestamps=timestamps,
                 forced_bos_id=forced_bos_id, start_id=start_id,
                 max_len=max_len, beam_size=beam_size,
                 length_penalty=length_penalty, early_stopping=early_stopping, min_len=min_len, num_return=num_return,
                 repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size, sample=sample,
                 temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)

def greedy_search(model: Transformer, src_ids: Any, max_len: int | None = None, length_penalty: float | None = None,
                  min_len: int | None = None, return_scores: bool = False):
  """Greedy decoding (the most probable token at each step) whatever the model's generation_config says."""
  return _search(model, src_ids, "greedy", return_scores, max_len=max_len, length_penalty=length_penalty, min_len=min_len)

def beam_search(model: Transformer, src_ids: Any, beam_size: int | None = None, max_len: int | None = None,
                length_penalty: float | None = None, early_stopping: bool | str | None = None, min_len: int | None = None,
                num_return: int | None = None, return_scores: bool = False):
  """Beam search for any beam_size, 1 included (which keeps the best continuation: greedy decoding by another road)."""
  return _search(model, src_ids, "beam", return_scores, beam_size=beam_size, max_len=max_len, length_penalty=length_penalty,
                 early_stopping=early_stopping, min_len=min_len, num_return=num_return)
