"""Generation: greedy and beam search over the Transformer, with KV caches and one compiled decode step.

The encoder runs once per batch and each decoder layer's cross-attention keys and values are projected once per
source; decoder self-attention keys and values live in per-layer caches, so a step costs one target position. The
step is captured once with TinyJit over a bound symbolic position and replayed for every position. Greedy decoding
keeps its state on the device; beam search reads each step's log-probs back and keeps the hypotheses on the host.
Rows of a batch finish independently: a finished row is padded out (its result is frozen) and decoding stops when
every row has finished.

Conventions follow Hugging Face `generate` where they apply, so imported Marian models translate as they do there:
- ids: a numpy int32 array (B * num_return, T) without the decoder start token, with eos where one was produced,
  right-padded with pad_id to the longest returned row; source i's hypotheses are rows i*num_return.. (best first).
- scores: sum of the tokens' log-probabilities (after the rules below) / length ** length_penalty, eos counted.
- max_len counts generated tokens (Hugging Face's max_length counts the start token too: it is max_len + 1).
- min_len: eos is masked until min_len tokens have been generated (min_new_tokens).
- forced_eos_id: at the last allowed step only eos may be chosen (forced_eos_token_id).
- suppress_ids: tokens that are never generated (single-token bad_words_ids; Marian suppresses its pad).
- beam search: the top 2 * beam_size continuations per source each step, finished hypotheses kept when they rank in
  the top beam_size, early_stopping True (stop once beam_size hypotheses are done), False (stop when the best live
  beam cannot beat the worst kept one at its current length) or "never" (at max_len, for length_penalty > 0).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from tinygrad import Tensor, UOp, dtypes
from tinygrad.nn.state import get_state_dict

from tfm.attention import KVCache
from tfm.errors import InputError
from tfm.memory import download, filled, host_view, upload
from tfm.model import Transformer
from tfm.replay import CompiledStep
from tfm.tune import tuned_entry

SOURCE_BUCKET = 8      # sources are padded to a multiple of this, so nearby lengths share one compiled step
FIRST_CACHE_LEN = 64   # caches start this long and double when a decode outgrows them
CHECK_EVERY = 4        # greedy decoding asks "all rows finished?" every this many steps (every step where that is free)
SESSIONS_PER_MODEL = 4


@dataclass(frozen=True)
class GenerationSettings:
  """Every knob of one `generate` call, resolved from its arguments, the model's generation_config and defaults."""
  max_len: int
  beam_size: int = 1
  length_penalty: float = 1.0
  early_stopping: bool | str = True
  min_len: int = 0
  num_return: int = 1
  forced_eos_id: int | None = None
  suppress_ids: tuple[int, ...] = ()
  start_id: int = 1


# what Hugging Face's GenerationConfig assumes for keys a generation_config.json leaves out
HF_DEFAULTS = {"max_new_tokens": 20, "min_length": 0, "num_beams": 1, "length_penalty": 1.0, "early_stopping": False,
               "num_return_sequences": 1}
# settings that change greedy or beam results and that tfm does not implement, with their no-op values
UNSUPPORTED = {"do_sample": False, "num_beam_groups": 1, "diversity_penalty": 0.0, "repetition_penalty": 1.0,
               "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "renormalize_logits": False,
               "exponential_decay_length_penalty": None, "forced_bos_token_id": None, "begin_suppress_tokens": None,
               "sequence_bias": None, "force_words_ids": None, "constraints": None}


def _from_generation_config(model: Transformer) -> dict[str, Any]:
  """Defaults from `model.generation_config`: a dict in Hugging Face's generation_config.json keys, which an imported
  checkpoint carries (tfm.from_pretrained sets it). Keys it leaves out take Hugging Face's defaults, so the model
  decodes as it does there; a model without one gets tfm's defaults."""
  gc = getattr(model, "generation_config", None)
  if gc is None: return {}
  ignored = [f"{k}={gc[k]!r}" for k, off in UNSUPPORTED.items() if gc.get(k) not in (None, off)]
  if ignored: warnings.warn(f"the model's generation_config sets {', '.join(ignored)}, which tfm.generate does not implement: "
                            f"decoding without them", stacklevel=4)
  gc = {k: v for k, v in gc.items() if v is not None}
  if "max_length" in gc: gc.setdefault("max_new_tokens", int(gc["max_length"]) - 1)  # theirs counts the start token
  gc = {**HF_DEFAULTS, **gc}
  out: dict[str, Any] = {"beam_size": int(gc["num_beams"]), "length_penalty": float(gc["length_penalty"]),
                         "early_stopping": gc["early_stopping"], "num_return": int(gc["num_return_sequences"])}
  out["max_len"] = int(gc["max_new_tokens"])
  out["min_len"] = int(gc["min_new_tokens"]) if "min_new_tokens" in gc else max(0, int(gc["min_length"]) - 1)
  if "forced_eos_token_id" in gc:  # an id, or a list of them (tfm forces the first)
    forced = gc["forced_eos_token_id"]
    out["forced_eos_id"] = int(forced[0] if isinstance(forced, (list, tuple)) else forced)
  if "decoder_start_token_id" in gc: out["start_id"] = int(gc["decoder_start_token_id"])
  single = [ids[0] for ids in gc.get("bad_words_ids") or [] if len(ids) == 1]
  out["suppress_ids"] = tuple(sorted(set(single) | set(gc.get("suppress_tokens") or [])))
  return out


def resolve_settings(model: Transformer, src_lengths: np.ndarray, **given: Any) -> GenerationSettings:
  """Arguments given (not None) win over the model's generation_config, which wins over the defaults."""
  config = model.config
  values: dict[str, Any] = {"start_id": config.start_id}
  values.update(_from_generation_config(model))
  if "max_len" in values: values["max_len"] = min(values["max_len"], config.max_len)  # the decoder has no more positions
  values.update({k: v for k, v in given.items() if v is not None})
  # the paper's output budget (section 6.1): input length + 50
  values.setdefault("max_len", min(int(src_lengths.max()) + 50, config.max_len))
  s = GenerationSettings(**values)
  _check_settings(s, config)
  return s


def _check_settings(s: GenerationSettings, config) -> None:
  def is_int(x) -> bool: return isinstance(x, (int, np.integer)) and not isinstance(x, bool)
  if not is_int(s.max_len) or not 1 <= s.max_len <= config.max_len:
    raise InputError(f"max_len={s.max_len!r} must be an integer in [1, {config.max_len}]: the decoder has positions "
                     f"for config.max_len={config.max_len} tokens")
  if not is_int(s.beam_size) or s.beam_size < 1:
    raise InputError(f"beam_size={s.beam_size!r} must be an integer >= 1 (1 is greedy decoding)")
  if not is_int(s.num_return) or not 1 <= s.num_return <= s.beam_size:
    raise InputError(f"num_return={s.num_return!r} must be an integer in [1, beam_size={s.beam_size}]: "
                     f"each returned hypothesis is one of the beams; raise beam_size to return more")
  if not is_int(s.min_len) or s.min_len < 0:
    raise InputError(f"min_len={s.min_len!r} must be an integer >= 0")
  if s.early_stopping not in (True, False, "never"):
    raise InputError(f"early_stopping={s.early_stopping!r} must be True, False or 'never'")
  if not isinstance(s.length_penalty, (int, float)) or not math.isfinite(s.length_penalty):
    raise InputError(f"length_penalty={s.length_penalty!r} must be a finite number (1.0 averages log-probs per token)")
  for name, ids in (("forced_eos_id", [] if s.forced_eos_id is None else [s.forced_eos_id]), ("suppress_ids", s.suppress_ids),
                    ("start_id", [s.start_id])):
    bad = [i for i in ids if not is_int(i) or not 0 <= i < config.vocab_size]
    if bad: raise InputError(f"{name} has token id {bad[0]!r}, out of range for vocab_size={config.vocab_size}")


# --- device-side state: caches, memory keys/values and the compiled steps ------------------------------------------

class Session:
  """What decoding one shape of batch needs on the device: source ids, memory keys/values, the step's inputs and
  outputs, and per cache length the KV caches with their captured steps. Reused by later batches of the same shape."""

  def __init__(self, model: Transformer, rows: int, beam: int, src_len: int):
    c, dev, n = model.config, model.device, rows * beam
    self.model_ref = weakref.ref(model)
    self.rows, self.beam, self.src_len, self.device = rows, beam, src_len, dev
    self.dtype = model.generator.weight.dtype
    with model.on_device():
      self.src = filled((rows, src_len), dtypes.int32, dev, c.pad_id)
      # per decoder layer: keys (n, H, S, hd) and values with a ones column (n, H, S, hd + 1), see memory_kv
      self.memory_kv = [(filled((n, c.n_heads, src_len, c.head_dim), self.dtype, dev),
                         filled((n, c.n_heads, src_len, c.head_dim + 1), self.dtype, dev))
                        for _ in range(c.n_decoder_layers)]
      self.src_mask = filled((n, 1, 1, src_len), dtypes.bool, dev, False)
      self.feed = filled((2, n), dtypes.int32, dev)  # beam search: next tokens and the rows they continue
      self.logprobs = filled((n, c.vocab_size), dtypes.float32, dev)  # beam search: read back every step
      # the generation rules: per position 0 (free), 1 (eos masked: min_len) or 2 (forced eos); log-prob biases for
      # every step (0, or -inf for suppressed tokens) and for the forced step (0 for the forced token, -inf elsewhere)
      self.rules = filled((c.max_len,), dtypes.int32, dev)
      self.bias = filled((2, c.vocab_size), dtypes.float32, dev)
    self.steps: dict[int, Steps] = {}
    self.key = {"config": c.to_dict(), "dtype": str(self.dtype), "device": dev, "tuned": tuned_entry(model.target or dev),
                "rows": rows, "beam": beam, "src_len": src_len}
    self.prefill = self.compiled(self._prefill, None, "prefill", self.named)

  def compiled(self, fn, variable: UOp | None, step: str, named, **key) -> CompiledStep:
    """fn as a compiled step of this session, kept in the compiled-program cache under its kind and shapes."""
    model = self.model
    return CompiledStep(fn, variable, lambda: self.model.on_device(), {**self.key, "step": step, **key}, named,
                        model.target or model.device)

  def named(self) -> dict[str, Tensor]:
    """Every buffer the session's steps read or write, under a name that is the same in every process."""
    model = self.model
    out = {f"weight:{name}": t for name, t in get_state_dict(model).items()}
    out["positions"] = model.positions.table()
    out.update(src=self.src, src_mask=self.src_mask, feed=self.feed, logprobs=self.logprobs, rules=self.rules, bias=self.bias)
    for i, (k, v) in enumerate(self.memory_kv): out[f"memory_kv.{i}.k"], out[f"memory_kv.{i}.v"] = k, v
    return out

  @property
  def model(self) -> Transformer:
    model = self.model_ref()
    assert model is not None, "a decode session outlived its model"
    return model

  def _prefill(self) -> None:
    """Encoder once per batch; memory keys/values and the source mask repeated for each beam."""
    model, b, k = self.model, self.rows, self.beam
    with model.on_device():
      memory = model.run_encoder(self.src)
      def per_beam(t: Tensor) -> Tensor: return t.unsqueeze(1).expand(b, k, *t.shape[1:]).reshape(b * k, *t.shape[1:])
      writes = [self.src_mask.assign(per_beam(model.padding_mask(self.src)))]
      for (k_buf, v_buf), (keys, values) in zip(self.memory_kv, model.memory_kv(memory)):
        writes += [k_buf.assign(per_beam(keys).cast(self.dtype)), v_buf.assign(per_beam(values).cast(self.dtype))]
      Tensor.realize(*writes)

  def steps_for(self, length: int, carry: Steps | None = None) -> Steps:
    """The caches and compiled steps for cache length `length`, holding `carry`'s slots when a decode outgrows it."""
    if length not in self.steps: self.steps[length] = Steps(self, length)
    steps = self.steps[length]
    if carry is not None: steps.take_over(carry)
    return steps


class Steps:
  """KV caches of one length and the two compiled steps over them: greedy (its state stays on the device) and beam
  search (log-probs read back, next tokens and row origins written in)."""

  def __init__(self, session: Session, length: int):
    model, c = session.model, session.model.config
    n = session.rows * session.beam
    self.session, self.length = session, length
    with model.on_device():
      self.caches = [KVCache(n, c.n_heads, length, c.head_dim, session.device, session.dtype) for _ in range(c.n_decoder_layers)]
      # greedy: [0, i, p] is row i's input token at position p (its output at p - 1), [1, i, p] that token's log-prob;
      # ids are stored as float32 (exact below 2**24) so one kernel writes both
      self.trace = filled((2, n, length + 1), dtypes.float32, session.device)
    pos = UOp.variable("pos", 0, length - 1)
    self.greedy = session.compiled(self._greedy_step, pos, "greedy", self.named, length=length)
    self.beam = session.compiled(self._beam_step, pos, "beam", self.named, length=length)

  def named(self) -> dict[str, Tensor]:
    out = {**self.session.named(), "trace": self.trace}
    for i, cache in enumerate(self.caches): out[f"cache.{i}"] = cache.kv
    return out

  def take_over(self, shorter: Steps) -> None:
    """Copy a shorter cache's slots (and greedy trace) in, to continue its decode."""
    with self.session.model.on_device():
      writes = [mine.kv[:, :, :, :shorter.length].assign(theirs.kv) for mine, theirs in zip(self.caches, shorter.caches)]
      Tensor.realize(*writes, self.trace[:, :, :shorter.length + 1].assign(shorter.trace))

  def _apply_rules(self, scores: Tensor, pos: UOp) -> Tensor:
    """The generation rules on log-probs (or logits) (N, V), as Hugging Face's logits processors apply them."""
    s, c = self.session, self.session.model.config
    rule = s.rules[pos:pos + 1]
    scores = ((rule == 1) & (Tensor.arange(c.vocab_size) == c.eos_id)).where(-math.inf, scores + s.bias[0])
    return (rule == 2).where(s.bias[1], scores)

  def _greedy_step(self, pos: UOp) -> None:
    """One greedy step, all on the device: reads the trace at pos, writes the chosen token and its log-prob at pos + 1."""
    s = self.session
    with s.model.on_device():
      last = self.trace[0, :, pos].cast(dtypes.int32)
      logits = s.model.decode_step(last.reshape(-1, 1), pos, self.caches, s.memory_kv, s.src_mask).float()
      top = logits.max(-1, keepdim=True)
      logsumexp = top + (logits - top).exp().sum(-1, keepdim=True).log()
      ruled = self._apply_rules(logits, pos)  # argmax of ruled logits = argmax of ruled log-probs
      best, best_logit = ruled.argmax(-1), ruled.max(-1, keepdim=True)
      logprob = (s.rules[pos:pos + 1] == 2).where(0.0, best_logit - logsumexp)  # a forced token has log-prob 0
      written = Tensor.stack(best.float(), logprob[:, 0]).reshape(2, -1, 1)
      # a whole-buffer assign: a view assign would also make this step's read of slot pos see the new value
      slot = Tensor.arange(self.length + 1) == pos + 1
      self.trace.assign(slot.where(written, self.trace)).realize()

  def _beam_step(self, pos: UOp) -> None:
    """One beam-search step: feed[0] holds each row's next token, feed[1] the row its hypothesis continues."""
    s = self.session
    with s.model.on_device():
      logits = s.model.decode_step(s.feed[0].reshape(-1, 1), pos, self.caches, s.memory_kv, s.src_mask, origin=s.feed[1])
      s.logprobs.assign(self._apply_rules(logits.float().log_softmax(-1), pos)).realize()


_SESSIONS: weakref.WeakKeyDictionary[Transformer, OrderedDict] = weakref.WeakKeyDictionary()


def session_for(model: Transformer, rows: int, beam: int, src_len: int) -> Session:
  """The model's session for this shape (least recently used ones are dropped), rebuilt if its weights were replaced."""
  params = model.parameters()
  if unrealized := [p for p in params if not p.uop.is_realized]: Tensor.realize(*unrealized)
  weights = tuple(id(p.uop.buffer) for p in params)  # captured steps read these buffers: a replaced one needs a new capture
  sessions = _SESSIONS.setdefault(model, OrderedDict())
  key = (rows, beam, src_len, weights)
  if key not in sessions:
    sessions[key] = Session(model, rows, beam, src_len)
    while len(sessions) > SESSIONS_PER_MODEL: sessions.popitem(last=False)
  sessions.move_to_end(key)
  return sessions[key]


def _cache_lengths(config) -> tuple[int, ...]:
  """The cache lengths a decode steps through: FIRST_CACHE_LEN, doubled until config.max_len."""
  lengths = [min(FIRST_CACHE_LEN, config.max_len)]
  while lengths[-1] < config.max_len: lengths.append(min(2 * lengths[-1], config.max_len))
  return tuple(lengths)


def _steps_at(session: Session, pos: int, steps: Steps | None) -> Steps:
  """The steps whose caches have a slot for `pos`: the first length, or the next one (carrying the slots over)."""
  if steps is not None and pos < steps.length: return steps
  length = next(n for n in _cache_lengths(session.model.config) if n > pos)
  return session.steps_for(length, carry=steps)


def _top(x: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k largest entries of each row, largest first (ties: lower index first)."""
  part = np.argpartition(-x, k - 1, axis=1)[:, :k] if k < x.shape[1] else np.broadcast_to(np.arange(x.shape[1]), x.shape)
  order = np.lexsort((part, -np.take_along_axis(x, part, 1)), axis=1)
  return np.take_along_axis(part, order, 1)


def _all_ended(steps: Steps, pos: int, eos: int) -> bool:
  """Has every row of a greedy decode produced eos by position pos? Asked every step where the device memory is host
  memory (a look, no copy), every CHECK_EVERY steps elsewhere (a copy and a sync)."""
  if (trace := host_view(steps.trace)) is None:
    if (pos + 1) % CHECK_EVERY: return False
    trace = download(steps.trace)
  return bool((trace[0, :, 1:pos + 2] == eos).any(1).all())


def _greedy(session: Session, s: GenerationSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Greedy decoding with its state on the device; the host only asks now and then whether all rows are done."""
  eos, pad = session.model.config.eos_id, session.model.config.pad_id
  steps, done_at = None, s.max_len
  for pos in range(s.max_len):
    if steps is None or pos >= steps.length:
      steps = _steps_at(session, pos, steps)
      if pos == 0:
        start = np.zeros(steps.trace.shape, np.float32)
        start[0, :, 0] = s.start_id
        upload(steps.trace, start)
    steps.greedy(pos)
    if _all_ended(steps, pos, eos):
      done_at = pos + 1
      break
  trace = download(steps.trace)[:, :, 1:done_at + 1]
  ids, logprobs = trace[0].astype(np.int32), trace[1]
  is_eos = ids == eos
  lengths = np.where(is_eos.any(1), is_eos.argmax(1) + 1, done_at)
  after = np.arange(done_at) >= lengths[:, None]
  ids[after] = pad
  return ids, np.where(after, np.float32(0), logprobs).sum(1, dtype=np.float32), lengths


def _beam_search(session: Session, s: GenerationSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Beam search: the device computes each step's log-probs, the host keeps the hypotheses, in float32 sums and
  Hugging Face's order of operations, so that the same log-probs select the same hypotheses as there."""
  c = session.model.config
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
  tokens, origin = np.full(b * k, s.start_id), np.arange(b * k)
  steps = None
  for t in range(max_len):
    steps = _steps_at(session, t, steps)
    upload(session.feed, np.stack([tokens, origin]))
    steps.beam(t)
    acc = (download(session.logprobs).reshape(b, k, vocab) + running_scores[:, :, None]).reshape(b, k * vocab)
    top = _top(acc, cands)
    top_scores = np.take_along_axis(acc, top, 1)
    beam_of, token = top // vocab, top % vocab
    grown = np.take_along_axis(running, beam_of[:, :, None], 1)  # (b, cands, max_len)
    grown[:, :, t] = token
    ends = (token == c.eos_id) | (t + 1 >= max_len)
    # the k best that did not end go on
    live_scores = top_scores + ends.astype(f32) * never
    keep = _top(live_scores, k)
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
    best = _top(merged, k)
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


def _rules(s: GenerationSettings, config) -> tuple[np.ndarray, np.ndarray]:
  """The contents of Session.rules and Session.bias for settings s."""
  rules = np.zeros(config.max_len, np.int32)
  rules[:s.min_len] = 1
  bias = np.zeros((2, config.vocab_size), np.float32)
  bias[0, list(s.suppress_ids)] = -np.inf
  if s.forced_eos_id is not None:
    rules[s.max_len - 1] = 2
    bias[1] = -np.inf
    bias[1, s.forced_eos_id] = 0.0
  return rules, bias


def _sources(model: Transformer, src_ids: Any) -> tuple[np.ndarray, np.ndarray]:
  """Checked source ids (B, S) on the host, and each row's length without padding."""
  if not isinstance(model, Transformer): raise InputError(f"model must be a tfm.Transformer, got {type(model).__name__}")
  src = model.check_ids(src_ids, "src_ids")
  lengths = (src != model.config.pad_id).sum(1)
  if (lengths == 0).any():
    raise InputError(f"src_ids row {int(np.argmin(lengths))} holds only pad tokens (pad_id={model.config.pad_id}): "
                     f"give every row at least one token, or leave the empty ones out")
  return src, lengths


def _encoded(model: Transformer, src: np.ndarray, s: GenerationSettings) -> Session:
  """The session for this batch's shape, with the batch encoded and the rules of `s` in place."""
  config = model.config
  b, src_len = src.shape[0], min(-(-src.shape[1] // SOURCE_BUCKET) * SOURCE_BUCKET, config.max_len)
  session = session_for(model, b, s.beam_size, src_len)
  padded = np.full((b, src_len), config.pad_id, np.int32)
  padded[:, :src.shape[1]] = src
  upload(session.src, padded)
  session.prefill()
  for buffer, array in zip((session.rules, session.bias), _rules(s, config)): upload(buffer, array)
  return session


def _search(model: Transformer, src_ids: Any, method: str, return_scores: bool, **given: Any):
  """Check the inputs, encode, then decode with `method`: "greedy", "beam", or "auto" (greedy for one beam)."""
  src, lengths = _sources(model, src_ids)
  s = resolve_settings(model, lengths, **given)
  greedy = method == "greedy" or (method == "auto" and s.beam_size == 1)
  if greedy: s = dataclasses.replace(s, beam_size=1, num_return=1)
  session = _encoded(model, src, s)
  if greedy:
    ids, sums, lengths = _greedy(session, s)
    scores = sums / lengths.astype(np.float32) ** s.length_penalty
  else: ids, scores, lengths = _beam_search(session, s)
  ids = np.ascontiguousarray(ids[:, :int(lengths.max())])
  return (ids, scores.astype(np.float32)) if return_scores else ids


def incremental_logprobs(model: Transformer, src_ids: Any, tgt_ids: Any) -> np.ndarray:
  """Teacher forcing through the KV-cache decode step: log-probs (B, T, vocab_size) of the token after each target
  prefix, computed one position at a time as generation computes them (no generation rules). The same numbers as
  `model(src_ids, tgt_ids).log_softmax(-1)` up to float32 rounding: a check of the cache, and a way to score targets."""
  src, _ = _sources(model, src_ids)
  tgt = model.check_ids(tgt_ids, "tgt_ids")
  if tgt.shape[0] != src.shape[0]:
    raise InputError(f"src_ids has batch size {src.shape[0]} but tgt_ids has {tgt.shape[0]}: give one target row per source row")
  session = _encoded(model, src, GenerationSettings(max_len=tgt.shape[1], start_id=model.config.start_id))
  steps, out = None, []
  for t in range(tgt.shape[1]):
    steps = _steps_at(session, t, steps)
    upload(session.feed, np.stack([tgt[:, t], np.arange(src.shape[0])]))
    steps.beam(t)
    out.append(download(session.logprobs))
  return np.stack(out, 1)


def generate(model: Transformer, src_ids: Any, max_len: int | None = None, beam_size: int | None = None,
             length_penalty: float | None = None, early_stopping: bool | str | None = None, min_len: int | None = None,
             num_return: int | None = None, return_scores: bool = False):
  """Translate a batch of sources (B, S), pad-padded to a common length: ids (B * num_return, T) [and scores].

  Arguments left as None take tfm's defaults: beam_size 1 (greedy), max_len = longest source + 50 (at most
  config.max_len), length_penalty 1.0, early_stopping True, min_len 0, num_return 1; or, for a model that carries a
  `generation_config` dict (an imported checkpoint), that dict's values with Hugging Face's defaults for the keys it
  leaves out. The module doc gives the conventions for ids, scores and lengths.
  """
  return _search(model, src_ids, "auto", return_scores, max_len=max_len, beam_size=beam_size, length_penalty=length_penalty,
                 early_stopping=early_stopping, min_len=min_len, num_return=num_return)


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
