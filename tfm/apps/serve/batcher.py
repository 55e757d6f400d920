"""The model thread and dynamic batching.

One thread owns every tinygrad call (tinygrad's state is process-wide): it warms the model up, then takes texts from
one queue, waits up to batch_wait_ms from the oldest for others decoded the same way (beam size, n-best) to join it,
and decodes up to max_batch of them together. Each batch's rows are padded to a power of two (a copy of its first
text, whose output is dropped) and its sources to a doubling length bucket, so that every batch has one of the few
shapes warm-up compiled: a new shape would compile kernels for seconds while every caller waited. HTTP threads only
encode (which checks each text), submit, and wait on their ticket's event.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from tfm.errors import InputError, TfmError
from tfm.generation import SOURCE_BUCKET, generate, keep_sessions
from tfm.generation.batching import padded
from tfm.apps.serve.protocol import Options
from tfm.apps.translator import LOCK, Translator


class Busy(TfmError):
  """The service cannot take the request now (warming up, full, stopping): try again after `retry_after` seconds."""

  def __init__(self, message: str, retry_after: int = 1):
    super().__init__(message)
    self.retry_after = retry_after


def row_sizes(max_batch: int) -> tuple[int, ...]:
  """The row counts batches are padded to: powers of two below max_batch, and max_batch."""
  sizes = [1]
  while sizes[-1] * 2 < max_batch: sizes.append(sizes[-1] * 2)
  return tuple(sizes + [max_batch] if max_batch > 1 else sizes)


def source_buckets(max_src_len: int, model_max_len: int) -> tuple[int, ...]:
  """The source lengths batches are padded to: 16 tokens, doubled until max_src_len is covered (at most max_len). A
  shorter first bucket would save little decoding and cost a compiled shape per row count and beam size."""
  sizes = [min(2 * SOURCE_BUCKET, model_max_len)]
  while sizes[-1] < max_src_len: sizes.append(min(sizes[-1] * 2, model_max_len))
  return tuple(sizes)


def encode(translator: Translator, texts: list[str], key: tuple, max_src_len: int) -> list[list[int]]:
  """The texts' ids in the source language the key names; an InputError for a text the model cannot take or one longer
  than max_src_len tokens. Tokenizers are not documented as thread-safe: the caller holds a lock of its own."""
  tokenizer, source = translator.tokenizer, key[2] if len(key) > 2 else None
  ids = tokenizer.encode(texts) if source is None else tokenizer.encode(texts, source_lang=source)
  for i, row in enumerate(ids):
    if len(row) > max_src_len:
      raise InputError(f"text {i} is {len(row)} tokens long, more than this server takes (--max-src-len {max_src_len}, the "
                       f"model's max_len is {translator.model.config.max_len}); split it into shorter texts")
  return ids


def decode_padded(translator: Translator, ids: list[list[int]], key: tuple, row_sizes: tuple[int, ...], buckets: tuple[int, ...],
                  tokenizer_lock) -> tuple[int, list[tuple[list[str], list[float]]]]:
  """One model call on texts decoded the same way (key: beam size, n-best, languages), rows padded to a row size (copies
  of the first text) and sources to a bucket, so that it runs a shape warm-up compiled: the rows run, and per text its
  n-best translations and scores. Padding changes no result (pad positions are masked)."""
  beam, n_best, target = key[0], key[1], key[3] if len(key) > 3 else None
  model, tokenizer = translator.model, translator.tokenizer
  rows = next(r for r in row_sizes if r >= len(ids))
  width = next(n for n in buckets if n >= max(map(len, ids)))
  src = padded(ids, model.config.pad_id, rows, width)
  with LOCK:
    out, scores = generate(model, src, beam_size=beam, num_return=n_best, return_scores=True, **translator.language_ids(target))
  with tokenizer_lock: texts = tokenizer.decode(out[:len(ids) * n_best].tolist())
  return rows, [(texts[r * n_best:(r + 1) * n_best], [float(s) for s in scores[r * n_best:(r + 1) * n_best]]) for r in range(len(ids))]


@dataclass(eq=False)
class Ticket:
  """One request's texts on their way through the queue; its handler waits on `done`."""
  ids: list[list[int]]
  key: tuple                           # (beam_size, n_best, source_lang, target_lang): texts decoded together share it
  arrived: float = field(default_factory=time.monotonic)
  texts: list = field(init=False)      # per text: its n_best translations, best first
  scores: list = field(init=False)     # per text: their scores
  left: int = field(init=False)        # texts not yet decoded
  error: Exception | None = None
  done: threading.Event = field(default_factory=threading.Event)

  def __post_init__(self):
    self.texts, self.scores, self.left = [None] * len(self.ids), [None] * len(self.ids), len(self.ids)


@dataclass
class Stats:
  """What the service did since it started (GET /info shows it)."""
  requests: int = 0     # accepted
  texts: int = 0        # translated
  batches: int = 0      # model calls
  rows: int = 0         # rows decoded, padding rows included
  full: int = 0         # refused with 503: the queue was full
  timeouts: int = 0     # gave up waiting (504)
  failures: int = 0     # texts the model failed on


class Batcher:
  """The queue and the model thread. `submit` (from any thread) encodes and enqueues a request's texts; the model
  thread warms up every shape (row count x beam size x source bucket) before it takes any, then decodes batches."""

  def __init__(self, translator: Translator, options: Options, progress: bool = False):
    self.translator, self.options, self.progress = translator, options, progress
    config = translator.model.config
    self.rows = row_sizes(options.max_batch)
    self.buckets = source_buckets(options.max_src_len, config.max_len)
    self.shapes = [(r, b, n) for b in options.beam_sizes for r in self.rows for n in self.buckets]
    self.stats = Stats()
    self.state, self.error, self.warmed = "starting", None, 0   # starting, warming up, ready, failed, stopped
    self._pending: deque[tuple[Ticket, int]] = deque()
    self._open = 0            # texts accepted and not yet answered
    self._stopping = False
    self._cv = threading.Condition()
    self._encoding = threading.Lock()   # tokenizers are not documented as thread-safe: encode and decode under it
    self._ready = threading.Event()
    self._thread = threading.Thread(target=self._run, name="tfm-serve-model", daemon=True)

  # --- any thread ---------------------------------------------------------------------------------------------

  def start(self) -> None: self._thread.start()

  def wait_ready(self, timeout: float | None = None) -> bool:
    """True once warm-up has finished (ready or failed: see `state`)."""
    return self._ready.wait(timeout)

  def submit(self, texts: list[str], key: tuple) -> Ticket:
    """Encode and check texts, then queue them; InputError for a text the model cannot take, Busy when the queue is
    full or the model thread is not serving."""
    with self._encoding: ids = encode(self.translator, texts, key, self.options.max_src_len)
    ticket = Ticket(ids, key)
    with self._cv:
      if self.state != "ready" or self._stopping:
        state = "stopping" if self._stopping else self.state
        if state == "failed": raise Busy("the model thread failed (GET /health says why); restart the server", 60)
        raise Busy(f"the model is not serving now ({state}); try again shortly")
      if self._open + len(ids) > self.options.max_queue:
        self.stats.full += 1
        raise Busy(f"the queue is full ({self._open} texts waiting, --max-queue {self.options.max_queue}); try again shortly")
      self._open += len(ids)
      self.stats.requests += 1
      self._pending.extend((ticket, i) for i in range(len(ids)))
      self._cv.notify()
    if not ids: ticket.done.set()
    return ticket

  def cancel(self, ticket: Ticket) -> None:
    """Give up on a ticket (its caller timed out): its texts still queued are dropped."""
    with self._cv:
      self.stats.timeouts += 1
      kept = deque(item for item in self._pending if item[0] is not ticket)
      self._open -= len(self._pending) - len(kept)
      self._pending = kept

  @property
  def queued(self) -> int:
    """Texts accepted and not yet answered."""
    with self._cv: return self._open

  def stop(self) -> None:
    """Decode what is queued, then end the model thread (warm-up stops after its current shape)."""
    with self._cv:
      self._stopping = True
      self._cv.notify_all()
    if self._thread.is_alive(): self._thread.join()

  # --- the model thread ---------------------------------------------------------------------------------------

  def _run(self) -> None:
    try:
      self._warm_up()
    except Exception as e:
      self.state, self.error = "failed", e
      self._ready.set()
      return
    self._ready.set()
    try:
      while (batch := self._next_batch()) is not None: self._decode_batch(batch)
      self.state = "stopped"
    except Exception as e:  # a fault of the service itself: every waiting caller hears of it, not only the first
      with self._cv:
        self.state, self.error = "failed", e
        for ticket, i in self._pending: self._finish(ticket, i, error=e)
        self._pending.clear()

  def _warm_up(self) -> None:
    """Compile (or load from the compiled-program cache) every shape a batch can have, and keep them all in memory."""
    from tinygrad.helpers import tqdm
    self.state = "warming up"
    keep_sessions(self.translator.model, len(self.shapes))
    for rows, beam, src_len in tqdm(self.shapes, desc="tfm serve: warming up", disable=not self.progress):
      if self._stopping: break
      self.translator.warmup(batch_sizes=(rows,), beam_sizes=(beam,), source_lengths=(src_len,), progress=False)
      self.warmed += 1
    self.state = "stopped" if self._stopping else "ready"

  def _next_batch(self) -> list[tuple[Ticket, int]] | None:
    """Up to max_batch queued texts of one key, the oldest first, once max_batch have come or the oldest has waited
    batch_wait_ms; None when stopping and nothing is left."""
    wait, most = self.options.batch_wait_ms / 1000, self.options.max_batch
    with self._cv:
      while True:
        while not self._pending:
          if self._stopping: return None
          self._cv.wait()
        first, _ = self._pending[0]
        deadline = first.arrived + wait
        while not self._stopping and self._pending and self._pending[0][0] is first:
          if sum(t.key == first.key for t, _ in self._pending) >= most: break
          left = deadline - time.monotonic()
          if left <= 0: break
          self._cv.wait(left)
        if not self._pending or self._pending[0][0] is not first: continue   # the oldest timed out meanwhile
        batch, rest = [], deque()
        for item in self._pending: (batch if item[0].key == first.key and len(batch) < most else rest).append(item)
        self._pending = rest
        return batch

  def _decode_batch(self, batch: list[tuple[Ticket, int]]) -> None:
    """Decode a batch; if it fails, each text alone, so that one bad text fails only its own request."""
    try:
      results = self._decode([t.ids[i] for t, i in batch], batch[0][0].key)
    except Exception as e:
      if len(batch) > 1:
        for item in batch: self._decode_batch([item])
        return
      with self._cv:
        self.stats.failures += 1
        self._finish(*batch[0], error=e)
      return
    with self._cv:
      for (ticket, i), (texts, scores) in zip(batch, results): self._finish(ticket, i, texts, scores)

  def _decode(self, ids: list[list[int]], key: tuple) -> list[tuple[list[str], list[float]]]:
    """One model call: rows padded to a row size (copies of the first text), sources to a bucket."""
    rows, results = decode_padded(self.translator, ids, key, self.rows, self.buckets, self._encoding)
    with self._cv: self.stats.batches, self.stats.rows = self.stats.batches + 1, self.stats.rows + rows
    return results

  def _finish(self, ticket: Ticket, i: int, texts=None, scores=None, error: Exception | None = None) -> None:
    """Record one text's outcome (the caller holds the condition); the ticket's event fires with its last text."""
    self._open -= 1
    if error is not None and ticket.error is None: ticket.error = error
    ticket.texts[i], ticket.scores[i] = texts, scores
    if texts is not None: self.stats.texts += 1
    ticket.left -= 1
    if ticket.left == 0: ticket.done.set()
