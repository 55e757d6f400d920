"""Decoding sessions: what decoding one shape of batch needs on the device (source ids, memory keys and values, KV
caches, the step's inputs and outputs) and its compiled steps (tfm.runtime.replay), kept per model and reused by later
batches of the same shape. A decode that outgrows its caches moves to caches twice as long."""
from __future__ import annotations

import weakref
from collections import OrderedDict

import numpy as np
from tinygrad import Tensor, UOp, dtypes
from tinygrad.nn.state import get_state_dict

from tfm.nn.attention import KVCache, value_width
from tfm.runtime.cpu_kernels import log_softmax, logsumexp
from tfm.errors import InputError
from tfm.generation.settings import FORCED_BOS, FORCED_EOS, FREE, GenerationSettings, rule_arrays
from tfm.nn.linear import PACK, pack_layers, packed_products
from tfm.runtime.memory import filled, upload
from tfm.nn.transformer import Transformer
from tfm.runtime.placement import TENSOR, batch_axis
from tfm.runtime.replay import CompiledStep
from tfm.runtime.tuned import tuned_entry

SOURCE_BUCKET = 8      # sources are padded to a multiple of this, so nearby lengths share one compiled step
FIRST_CACHE_LEN = 64   # caches start this long and double when a decode outgrows them
SESSIONS_PER_MODEL = 4


class Session:
  """What decoding one shape of batch needs on the device: source ids, memory keys/values, the step's inputs and
  outputs, and per cache length the KV caches with their captured steps. Reused by later batches of the same shape."""

  def __init__(self, model: Transformer, rows: int, beam: int, src_len: int):
    c, dev, n = model.config, model.device, rows * beam
    self.model_ref = weakref.ref(model)
    self.rows, self.beam, self.src_len, self.device = rows, beam, src_len, dev
    self.dtype = model.dtype
    # on several devices (tfm.runtime.placement): a data-parallel model splits the rows (whole sentences with their beams on
    # each device), a tensor-parallel one the heads; None: every buffer whole on each device (or one device)
    self.row_axis = batch_axis(model, rows)
    self.head_axis = 1 if model.parallel == TENSOR else None
    rows_first, heads_second = self.row_axis, 0 if self.row_axis == 0 else self.head_axis
    rows_second = None if self.row_axis is None else 1
    with model.on_device():
      # token ids, or an audio encoder's log-mel features (2 frames per position of memory)
      self.src = (filled((rows, c.n_mels, 2 * src_len), dtypes.float32, dev, axis=rows_first) if c.n_mels else
                  filled((rows, src_len), dtypes.int32, dev, c.pad_id, rows_first))
      # per decoder layer: keys (n, H, S, hd) and values with their ones column (n, H, S, value_width(hd)), see memory_kv
      self.memory_kv = [(filled((n, c.n_heads, src_len, c.head_dim), self.dtype, dev, axis=heads_second),
                         filled((n, c.n_heads, src_len, value_width(c.head_dim)), self.dtype, dev, axis=heads_second))
                        for _ in range(c.n_decoder_layers)]
      self.src_mask = filled((n, 1, 1, src_len), dtypes.bool, dev, False, rows_first)
      self.feed = filled((2, n), dtypes.int32, dev, axis=rows_second)  # beam search: next tokens and the rows they continue
      self.logprobs = filled((n, c.vocab_size), dtypes.float32, dev, axis=rows_first)  # beam search: read back every step
      # the generation rules per output position, and the log-prob biases they add (tfm.generation.settings.rule_arrays)
      self.rules = filled((c.max_len,), dtypes.int32, dev)
      self.bias = filled((5, c.vocab_size), dtypes.float32, dev)
    # products from packed weights (tfm.nn.linear.Linear.pack) where they run faster; each prefill refreshes the copies,
    # so a decode always reads the weights as they are (a model trained between two decodes included)
    self.packed = pack_layers(model)   # (none on several devices: packable)
    self.steps: dict[int, Steps] = {}
    self.key = {"config": c.to_dict(), "dtype": "int8" if model.quantized else str(self.dtype), "device": dev,
                "parallel": model.parallel, "rows split": self.row_axis == 0,
                "tuned": tuned_entry(model.target or dev),
                "rows": rows, "beam": beam, "src_len": src_len, "packed": len(self.packed), "pack": PACK}
    self.prefill = self.compiled(self._prefill, None, "prefill", self.named)

  def compiled(self, fn, variable: UOp | None, step: str, named, **key) -> CompiledStep:
    """fn as a compiled step of this session, kept in the compiled-program cache under its kind and shapes."""
    model = self.model
    def run(*args) -> None:
      with packed_products(): fn(*args)
    return CompiledStep(run, variable, lambda: self.model.on_device(), {**self.key, "step": step, **key}, named,
                        model.target or model.device)

  def named(self) -> dict[str, Tensor]:
    """Every buffer the session's steps read or write, under a name that is the same in every process."""
    model = self.model
    out = {f"weight:{name}": t for name, t in get_state_dict(model).items()}
    out.update({f"packed.{i}": layer.packed for i, layer in enumerate(self.packed)})   # in linear_layers' order
    if model.positions is not None: out["positions"] = model.positions.table()
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
      writes = [layer.repack() for layer in self.packed]
      memory = model.run_encoder(self.src)
      def per_beam(t: Tensor) -> Tensor: return t.unsqueeze(1).expand(b, k, *t.shape[1:]).reshape(b * k, *t.shape[1:])
      mask = model.source_mask(self.src)
      if mask is None: mask = Tensor.ones(b, 1, 1, self.src_len, dtype=dtypes.bool)   # audio: every frame attends
      writes.append(self.src_mask.assign(per_beam(mask)))
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
    cache_axis = 1 if session.row_axis == 0 else None if session.head_axis is None else 2
    with model.on_device():
      self.caches = [KVCache(n, c.n_heads, length, c.head_dim, session.device, session.dtype, cache_axis, session.beam)
                     for _ in range(c.n_decoder_layers)]
      # greedy: [0, i, p] is row i's input token at position p (its output at p - 1), [1, i, p] that token's log-prob;
      # ids are stored as float32 (exact below 2**24) so one kernel writes both
      self.trace = filled((2, n, length + 1), dtypes.float32, session.device, axis=None if session.row_axis is None else 1)
    pos = UOp.variable("pos", 0, length - 1)
    self.greedy = session.compiled(self._greedy_step, pos, "greedy", self.named, length=length)
    self.beam = session.compiled(self._beam_step, pos, "beam", self.named, length=length)
    self.logits = session.compiled(self._logits_step, pos, "logits", self.named, length=length)   # compiled when first used

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
    s = self.session
    rule = s.rules[pos:pos + 1]
    row = (Tensor.arange(s.bias.shape[0]).reshape(-1, 1) == rule).where(s.bias, 0).sum(0)   # this position's rule's row
    return _is_forced(rule).where(row, scores + row)

  def _greedy_step(self, pos: UOp) -> None:
    """One greedy step, all on the device: reads the trace at pos, writes the chosen token and its log-prob at pos + 1."""
    s = self.session
    with s.model.on_device():
      last = self.trace[0, :, pos].cast(dtypes.int32)
      logits = s.model.decode_step(last.reshape(-1, 1), pos, self.caches, s.memory_kv, s.src_mask).float()
      normaliser = logsumexp(logits)
      ruled = self._apply_rules(logits, pos)  # argmax of ruled logits = argmax of ruled log-probs
      best, best_logit = ruled.argmax(-1), ruled.max(-1, keepdim=True)
      logprob = _is_forced(s.rules[pos:pos + 1]).where(0.0, best_logit - normaliser)  # a forced token has log-prob 0
      written = Tensor.stack(best.float(), logprob[:, 0]).reshape(2, -1, 1)
      # tinygrad-0.14: a view assign would also make this step's read of slot pos see the new value: a whole-buffer assign
      slot = Tensor.arange(self.length + 1) == pos + 1
      self.trace.assign(slot.where(written, self.trace)).realize()

  def _beam_step(self, pos: UOp) -> None:
    """One beam-search step: feed[0] holds each row's next token, feed[1] the row its hypothesis continues."""
    s = self.session
    with s.model.on_device():
      logits = s.model.decode_step(s.feed[0].reshape(-1, 1), pos, self.caches, s.memory_kv, s.src_mask, origin=s.feed[1])
      s.logprobs.assign(self._apply_rules(log_softmax(logits.float()), pos)).realize()

  def _logits_step(self, pos: UOp) -> None:
    """The beam step's inputs, the raw logits out (no rules): for decoding whose rules run on the host (tfm.generation.rules)."""
    s = self.session
    with s.model.on_device():
      logits = s.model.decode_step(s.feed[0].reshape(-1, 1), pos, self.caches, s.memory_kv, s.src_mask, origin=s.feed[1])
      s.logprobs.assign(logits.float()).realize()

_SESSIONS: weakref.WeakKeyDictionary[Transformer, OrderedDict] = weakref.WeakKeyDictionary()
_KEPT: weakref.WeakKeyDictionary[Transformer, int] = weakref.WeakKeyDictionary()

def _is_forced(rule: Tensor) -> Tensor: return (rule == FORCED_EOS) | (rule == FORCED_BOS)


def keep_sessions(model: Transformer, n: int) -> None:
  """Let `model` keep at least n decoding sessions (default SESSIONS_PER_MODEL) instead of rebuilding the least recently
  used: a server that decodes a fixed set of shapes keeps every one it warmed. Each holds its shape's KV caches."""
  if not isinstance(n, int) or n < 1: raise InputError(f"keep_sessions needs a count >= 1, got {n!r}")
  _KEPT[model] = max(n, _KEPT.get(model, SESSIONS_PER_MODEL))

def forget_sessions(model: Transformer) -> None:
  """Drop every decoding session `model` keeps: its next decode builds (or loads from the cache) its steps anew."""
  _SESSIONS.pop(model, None)

def sessions_of(model: Transformer) -> list[Session]:
  """The decoding sessions `model` keeps now, least recently used first (benchmarks and tests inspect their steps)."""
  return list(_SESSIONS.get(model, {}).values())

def session_for(model: Transformer, rows: int, beam: int, src_len: int) -> Session:
  """The model's session for this shape (least recently used ones are dropped), rebuilt if its weights were replaced."""
  weights = model.weight_buffers()
  sessions = _SESSIONS.setdefault(model, OrderedDict())
  key = (rows, beam, src_len, weights)
  if key not in sessions:
    sessions[key] = Session(model, rows, beam, src_len)
    while len(sessions) > _KEPT.get(model, SESSIONS_PER_MODEL): sessions.popitem(last=False)
  sessions.move_to_end(key)
  return sessions[key]

def cache_lengths(config) -> tuple[int, ...]:
  """The cache lengths a decode steps through: FIRST_CACHE_LEN, doubled until config.max_len."""
  lengths = [min(FIRST_CACHE_LEN, config.max_len)]
  while lengths[-1] < config.max_len: lengths.append(min(2 * lengths[-1], config.max_len))
  return tuple(lengths)

def steps_at(session: Session, pos: int, steps: Steps | None) -> Steps:
  """The steps whose caches have a slot for `pos`: the first length, or the next one (carrying the slots over)."""
  if steps is not None and pos < steps.length: return steps
  length = next(n for n in cache_lengths(session.model.config) if n > pos)
  return session.steps_for(length, carry=steps)

def encoded(model: Transformer, src: np.ndarray, s: GenerationSettings, prompt_len: int = 1) -> Session:
  """The session for this batch's shape, with the batch encoded and the rules of `s` in place. The rules are per output
  position and the steps index them by decoder position: after a decoder prompt of prompt_len tokens (the start token
  alone: 1), output position t is decoder position prompt_len - 1 + t."""
  config = model.config
  if config.n_mels:   # log-mel features, always 2 x source_positions frames
    session = session_for(model, src.shape[0], s.beam_size, config.source_positions)
    upload(session.src, src)
  else:
    b, src_len = src.shape[0], min(-(-src.shape[1] // SOURCE_BUCKET) * SOURCE_BUCKET, config.max_len)
    session = session_for(model, b, s.beam_size, src_len)
    padded = np.full((b, src_len), config.pad_id, np.int32)
    padded[:, :src.shape[1]] = src
    upload(session.src, padded)
  session.prefill()
  rules, bias = rule_arrays(s, config)
  rules = np.concatenate([np.full(prompt_len - 1, FREE, np.int32), rules])[:config.max_len]   # FREE in the prompt
  for buffer, array in zip((session.rules, session.bias), (rules, bias)): upload(buffer, array)
  return session


def prepare(model: Transformer, batch_sizes: tuple[int, ...] = (1,), beam_sizes: tuple[int, ...] = (1,),
            max_src_len: int | None = None, progress: bool = True, source_lengths: tuple[int, ...] | None = None) -> int:
  """Compile, ahead of time, every step that decoding batches of `batch_sizes` rows with `beam_sizes` beams and
  sources of up to max_src_len tokens (default: 64, at most config.max_len) can use: the encoder pass of each source
  bucket and the decode step of each cache length its output budget reaches. `source_lengths` prepares the buckets of
  just those lengths instead (a server that pads its sources to a few lengths). Each lands in the compiled-program
  cache (tfm.runtime.cache), so later processes start without compiling. Returns the number of steps prepared."""
  from tinygrad.helpers import tqdm

  from tfm.generation.rules import active as host_rules
  from tfm.generation.settings import resolve_settings
  c = model.config
  lengths = source_lengths or range(1, min(max_src_len or 64, c.max_len) + 1)
  buckets = sorted({min(-(-n // SOURCE_BUCKET) * SOURCE_BUCKET, c.max_len) for n in lengths})
  shapes = [(b, k, n) for b in batch_sizes for k in beam_sizes for n in buckets]
  token = max(c.pad_id, c.bos_id, c.eos_id, c.start_id) + 1
  prepared = 0
  for rows, beam, src_len in tqdm(shapes, desc=f"compiling on {model.where}", disable=not progress):
    src = np.full((rows, src_len), token % c.vocab_size, np.int32)
    src[:, -1] = c.eos_id
    s = resolve_settings(model, np.array([src_len]), beam_size=beam, num_return=1)
    session = encoded(model, src, s)
    prepared += 1
    for length in cache_lengths(c):
      steps = session.steps_for(length)
      # its first call compiles it (or loads it from the cache); greedy under host-side rules runs the logits step
      (steps.beam if beam > 1 else steps.logits if host_rules(s) else steps.greedy)(0)
      prepared += 1
      if length >= s.max_len: break
  return prepared
