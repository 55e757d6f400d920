"""Translator: text in, text out, with a model, the tokenizer of its vocabulary, and tfm.generate.

    tr = tfm.Translator.bundled()                       # the model that ships with tfm (dates -> ISO dates)
    tr.translate(["3rd of March, 2021"])                # -> ["2021-03-03"]
    tr = tfm.Translator.load("opus-mt-en-de/")          # a Marian checkpoint folder, with its SentencePiece vocabulary
    texts, scores = tr.translate(["Hello"], beam_size=4, return_scores=True)
    tr = tfm.Translator.load("nllb-200-distilled-600M/", source_lang="eng_Latn", target_lang="fra_Latn")
    tr.translate(["Hello"], target_lang="deu_Latn")     # a multilingual model's languages, per call
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Sequence

import numpy as np

from tfm.generation import batching
from tfm.errors import InputError, WeightsError
from tfm.files import ASSETS, BUNDLED_MODEL, BUNDLED_VOCAB
from tfm.generation import generate, lengths_to_eos, resolve_settings
from tfm.nn.transformer import Transformer
from tfm.runtime.placement import resolve_device
from tfm.io.weights import copy_to

# tinygrad's settings (Context, DEV) and JIT caches are process-wide, and generation sessions are kept per model:
# translations from several threads run one at a time, whichever Translator they use
LOCK = threading.RLock()


def moved(model: Transformer, device: Any, parallel: str | None = None) -> Transformer:
  """model itself if it is on `device` (None: where it is) and split as `parallel` says, else a copy of it there
  (weights, generation settings)."""
  if device is None or (resolve_device(device)[0] == model.device and parallel in (None, model.parallel)): return model
  return copy_to(model, device, parallel)


class Translator:
  """A Transformer and the tokenizer of its vocabulary: `translate(texts)` encodes, generates and decodes a batch.

  The tokenizer speaks tfm.io.tokenizer's interface: encode(texts) -> id lists ending with eos, decode(ids) -> texts.
  `device` runs the model there (a copy of it when it lives elsewhere); None keeps it where it is. Several devices
  ("CPU*2") split it as `parallel` says (tfm.runtime.placement).
  Thread-safe by serialising: `translate` holds the module's LOCK, so calls from several threads run one after another
  (tinygrad's state is process-wide); other tfm calls made from other threads at the same time should hold LOCK too.
  """

  def __init__(self, model: Transformer, tokenizer: Any, device: Any = None, parallel: str | None = None):
    if not isinstance(model, Transformer): raise InputError(f"model must be a tfm.Transformer, got {type(model).__name__}")
    for method in ("encode", "decode"):
      if not callable(getattr(tokenizer, method, None)):
        raise InputError(f"tokenizer has no {method}() method; give a tfm.io.tokenizer tokenizer (CharTokenizer, MarianTokenizer)")
    c = model.config
    if getattr(tokenizer, "vocab_size", c.vocab_size) > c.vocab_size:
      raise InputError(f"the tokenizer's vocab_size={tokenizer.vocab_size} exceeds the model's vocab_size={c.vocab_size}: "
                       f"use the vocabulary the model was trained with")
    for name in ("pad_id", "eos_id"):
      if getattr(tokenizer, name, getattr(c, name)) != getattr(c, name):
        raise InputError(f"the tokenizer's {name}={getattr(tokenizer, name)} differs from the model's {name}={getattr(c, name)}: "
                         f"use the vocabulary the model was trained with")
    self.model, self.tokenizer = moved(model, device, parallel), tokenizer

  def translate(self, texts: Sequence[str], beam_size: int | None = None, max_len: int | None = None,
                return_scores: bool = False, num_hypotheses: int = 1, max_batch_size: int = 32,
                batch_type: str = "examples", target_prefix: Sequence[str | None] | None = None,
                return_attention: bool = False, source_lang: str | None = None, target_lang: str | None = None,
                **rules: Any) -> list | tuple:
    """Translate texts; beam_size and max_len as in tfm.generate.

    source_lang, target_lang: a multilingual model's languages for this call (NLLB's "eng_Latn", M2M100's "en", mBART's
    "en_XX"; `translator.languages` lists them), over those it was loaded with.

    Up to max_batch_size texts (batch_type "examples"), or texts of up to max_batch_size padded tokens ("tokens"),
    run as one batch; a longer list is sorted by length and run batch by batch (tfm.generation.batching), so memory stays
    bounded however long it is, and the results come back in the input order. num_hypotheses > 1 (at most
    beam_size) returns each text's best translations, best first, as a list per text (and a list of scores).
    target_prefix: per text, the start its translation is forced to (None: free). Other keyword arguments are
    tfm.generate's decoding rules: repetition_penalty, no_repeat_ngram_size, bad_words (token ids), sample,
    temperature, top_k, top_p, seed.
    return_attention: also return, per text, the cross-attention of its (best) translation: an array (decoder layers,
    heads, output tokens, source tokens), row t what output token t attended to (eos included on both sides), as
    `tfm attention` draws it; one more decoder pass per text. Returns (texts[, scores][, attentions])."""
    if isinstance(texts, str): raise InputError("translate takes a list of texts; wrap a single text as [text]")
    try:
      texts = list(texts)
    except TypeError:
      raise InputError(f"translate takes a list of texts, got {type(texts).__name__}") from None
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
      raise InputError(f"text {bad} is {type(texts[bad]).__name__}, not str; give texts as str (bytes: .decode('utf-8'))")
    if not isinstance(num_hypotheses, int) or num_hypotheses < 1:
      raise InputError(f"num_hypotheses={num_hypotheses!r} must be a positive integer")
    batching.check_bound(max_batch_size, batch_type)
    if target_prefix is not None and len(target_prefix) != len(texts):
      raise InputError(f"target_prefix has {len(target_prefix)} entries for {len(texts)} texts: give one per text (None for none)")
    with LOCK, self.languages_set(source_lang, target_lang):
      out, scores, attentions = ([], [], []) if not texts else self._translate(
        texts, beam_size, max_len, num_hypotheses, max_batch_size, batch_type, target_prefix, return_attention, rules)
    extra = ([scores] if return_scores else []) + ([attentions] if return_attention else [])
    return (out, *extra) if extra else out

  def _translate(self, texts: list[str], beam_size, max_len, num_hypotheses: int, max_batch_size: int, batch_type: str,
                 target_prefix, return_attention: bool, rules: dict) -> tuple[list, list, list | None]:
    """translate() for checked, non-empty texts: translations, scores and attentions (None unless asked for)."""
    attentions = None
    with LOCK:
      ids = self._encode(texts)
      prefixes = None if target_prefix is None else [self.prefix_ids(p, i) for i, p in enumerate(target_prefix)]
      lengths = [len(row) for row in ids]
      one_batch = len(ids) <= max_batch_size if batch_type == "examples" else len(ids) * max(lengths) <= max_batch_size
      batches = [list(range(len(ids)))] if one_batch else batching.plan(lengths, max_batch_size, batch_type)
      out: list = [None] * len(ids)
      scores: list = [None] * len(ids)
      best: list = [None] * len(ids)
      for batch in batches:
        rows = [ids[i] for i in batch]
        starts = None if prefixes is None else [prefixes[i] for i in batch]
        if not one_batch:   # a few row counts, so that the batches reuse their compiled steps
          most = max_batch_size if batch_type == "examples" else max(1, max_batch_size // max(map(len, rows)))
          extra = batching.padded_rows(len(rows), most) - len(rows)
          rows += rows[:1] * extra
          if starts is not None: starts += starts[:1] * extra
        found, found_scores, found_ids = self._generate(rows, beam_size, max_len, num_hypotheses, target_prefix=starts, **rules)
        for j, i in enumerate(batch):
          out[i], scores[i], best[i] = found[j], found_scores[j], found_ids[j]
      if return_attention:
        from tfm.apps.attention_map import attention_of
        attentions = [attention_of(self.model, np.array([ids[i]], np.int32), [best[i]]) for i in range(len(ids))]
    if num_hypotheses == 1: out, scores = [o[0] for o in out], [s[0] for s in scores]
    return out, scores, attentions

  def prefix_ids(self, prefix: str | None, i: int) -> list[int]:
    """target_prefix[i] as the ids of the target vocabulary, [] for None."""
    if prefix is None: return []
    if not isinstance(prefix, str): raise InputError(f"target_prefix[{i}] is {type(prefix).__name__}, not str (or None)")
    encode = getattr(self.tokenizer, "encode_target", None)
    try:
      return encode([prefix])[0] if encode is not None else self.tokenizer.encode([prefix])[0][:-1]
    except InputError as e:
      raise InputError(f"target_prefix[{i}]: {str(e).removeprefix('text 0 ')}") from None

  def _encode(self, texts: list[str]) -> list[list[int]]:
    """The texts' ids (eos included), each at most the model's max_len tokens; the caller holds LOCK."""
    ids = self.tokenizer.encode(texts)
    longest = max(range(len(ids)), key=lambda i: len(ids[i]))
    if len(ids[longest]) > self.model.config.max_len:
      raise InputError(f"text {longest} is {len(ids[longest])} tokens long, more than the model's max_len="
                       f"{self.model.config.max_len}; split it into shorter texts")
    return ids

  def _generate(self, ids: list[list[int]], beam_size: int | None, max_len: int | None, n: int, **rules: Any):
    """One batch: per row, its n translations and their scores; the caller holds LOCK."""
    src = batching.padded(ids, self.model.config.pad_id)
    beams = beam_size or resolve_settings(self.model, np.array([1])).beam_size   # None: the model's own setting
    if n > 1 and beams < n:
      raise InputError(f"num_hypotheses={n} needs beam_size >= {n} (got {beams}): beam search keeps beam_size hypotheses")
    out, scores = generate(self.model, src, max_len=max_len, beam_size=beam_size, num_return=n if n > 1 else None,
                           return_scores=True, **self.language_ids(), **rules)
    decoded = self.tokenizer.decode(out.tolist())
    ends = lengths_to_eos(out, self.model.config.eos_id)
    return ([decoded[i * n:(i + 1) * n] for i in range(len(ids))],
            [[float(x) for x in scores[i * n:(i + 1) * n]] for i in range(len(ids))],
            [[int(t) for t in out[i * n, :ends[i * n]]] for i in range(len(ids))])   # each text's best, up to its eos

  @property
  def languages(self) -> list[str]:
    """The language codes a multilingual model's tokenizer knows (NLLB, M2M100, mBART); [] for the others."""
    return list(getattr(self.tokenizer, "languages", []))

  @contextlib.contextmanager
  def languages_set(self, source_lang: str | None, target_lang: str | None):
    """The tokenizer's source and target languages set to those given (not None) for the block, then put back; an
    InputError naming the codes for an unknown one, or for any on a model without languages. The caller holds LOCK."""
    if source_lang is None and target_lang is None:
      yield
      return
    if not self.languages:
      raise InputError(f"this model has no languages to choose (source_lang={source_lang!r}, target_lang={target_lang!r}): "
                       f"it translates one language pair; leave them out")
    tok = self.tokenizer
    saved = tok.source_lang, tok.target_lang
    try:
      if source_lang is not None: tok.source_lang = source_lang
      if target_lang is not None: tok.target_lang = target_lang
      yield
    finally:
      tok.source_lang, tok.target_lang = saved

  def language_ids(self, target_lang: str | None = None) -> dict[str, int]:
    """What generation needs of the target language (target_lang, else the tokenizer's): the first output token it
    forces (NLLB, M2M100, mBART-50) or the decoder's start token (mBART); an InputError listing the codes when a
    multilingual model has no target language. The caller holds LOCK."""
    with self.languages_set(None, target_lang):
      ids = {"forced_bos_id": getattr(self.tokenizer, "forced_bos_id", None), "start_id": getattr(self.tokenizer, "decoder_start_id", None)}
    return {k: v for k, v in ids.items() if v is not None}

  def problems(self, texts: Sequence[str]) -> dict[int, str]:
    """Why each text that cannot be translated cannot be (a character outside the vocabulary, more tokens than the
    model's max_len), by index; {} when all can. What translate would raise for them, found one text at a time."""
    found = {}
    for i, text in enumerate(texts):
      try:
        (row,) = self.tokenizer.encode([text])
      except InputError as e:
        found[i] = str(e).removeprefix("text 0 ")
        continue
      if len(row) > self.model.config.max_len:
        found[i] = f"{len(row)} tokens long, more than the model's max_len={self.model.config.max_len}; split it"
    return found

  def stream(self, text: str, max_len: int | None = None, target_prefix: str | None = None, source_lang: str | None = None,
             target_lang: str | None = None, **rules: Any):
    """Translate one text greedily (or by sampling: the keyword arguments are tfm.generate's decoding rules), yielding
    the translation piece by piece as its tokens are decoded (joined, the pieces are what translate([text],
    beam_size=1, target_prefix=[target_prefix], **rules) returns). The translation holds the module's LOCK until
    the generator is exhausted or closed: iterate it to the end (or close it) before translating elsewhere."""
    from tfm.generation import generate_tokens
    if not isinstance(text, str): raise InputError(f"stream takes one text (str), got {type(text).__name__}")
    with LOCK, self.languages_set(source_lang, target_lang):
      src = np.array(self._encode([text]), np.int32)
      ids, said = [], ""
      if target_prefix is not None: rules["target_prefix"] = [self.prefix_ids(target_prefix, 0)]
      for step in generate_tokens(self.model, src, max_len=max_len, **self.language_ids(), **rules):
        ids.append(int(step[0]))
        (now,) = self.tokenizer.decode([ids])
        if now.startswith(said) and len(now) > len(said):   # a piece may only show once the next one is decoded
          yield now[len(said):]
          said = now
        if ids[-1] == self.model.config.eos_id: break
      (final,) = self.tokenizer.decode([ids])
      if final != said and final.startswith(said): yield final[len(said):]

  def warmup(self, batch_sizes: Sequence[int] = (1,), beam_sizes: Sequence[int] | None = None, max_src_len: int | None = None,
             progress: bool = True, source_lengths: Sequence[int] | None = None) -> int:
    """Compile now (or load from the compiled-program cache) what translating batches of `batch_sizes` texts of up to
    max_src_len tokens (default 64, at most the model's max_len) with `beam_sizes` beams (default: the model's own
    setting) will run, so that neither this process's first translation nor a later process's compiles anything.
    `source_lengths` compiles for sources of just those lengths (in tokens) instead. Returns the number of compiled steps."""
    from tfm.generation import prepare, resolve_settings
    beams = tuple(beam_sizes) if beam_sizes else (resolve_settings(self.model, np.array([1])).beam_size,)
    lengths = tuple(source_lengths) if source_lengths else None
    with LOCK: return prepare(self.model, tuple(batch_sizes), beams, max_src_len, progress, lengths)

  @classmethod
  def load(cls, path: str | os.PathLike, device: Any = None, dtype: str | None = None, parallel: str | None = None,
           source_lang: str | None = None, target_lang: str | None = None) -> Translator:
    """A checkpoint folder as transformers writes it, with its tokenizer files (Marian: source.spm, target.spm,
    vocab.json; NLLB, M2M100, mBART, BART, Pegasus, T5: tfm.io.families), or a tfm weight file with its character
    vocabulary beside it (NAME.vocab.json or vocab.json, as training writes it). source_lang, target_lang: a
    multilingual model's languages (each call may change them). dtype: the model's compute dtype, as tfm.load takes it
    (float32 when None; "int8" for int8 Linear weights); device and parallel as tfm.load takes them."""
    from tfm.interop.folders import from_pretrained, model_type
    from tfm.io.families import FolderTokenizer
    from tfm.io.tokenizer import CharTokenizer, MarianTokenizer
    from tfm.io.weights import load
    path = os.fspath(path)
    if os.path.isdir(path):
      if model_type(path) in ("marian", None):
        if source_lang is not None or target_lang is not None:
          raise InputError(f"{path} is a Marian model, which translates one language pair: leave source_lang and target_lang out")
        tokenizer = MarianTokenizer.from_dir(path)
      else: tokenizer = FolderTokenizer.from_dir(path, source_lang, target_lang)
      return cls(from_pretrained(path, device, dtype, parallel), tokenizer)
    if not os.path.isfile(path):
      raise WeightsError(f"{path} does not exist; give a checkpoint folder or a .safetensors file written by tfm")
    stem = os.path.splitext(path)[0]
    vocab = next((v for v in (stem + ".vocab.json", os.path.join(os.path.dirname(path), "vocab.json")) if os.path.isfile(v)), None)
    if vocab is None:
      raise WeightsError(f"no vocabulary found for {path}: expected {os.path.basename(stem)}.vocab.json or vocab.json beside it")
    return cls(load(path, device, dtype, parallel), CharTokenizer.load(vocab))

  @classmethod
  def bundled(cls, device: Any = None, dtype: str | None = None, parallel: str | None = None) -> Translator:
    """The model that ships with tfm: trained on the dates task (tfm.training.tasks), loaded from tfm/assets."""
    missing = [os.path.basename(p) for p in (BUNDLED_MODEL, BUNDLED_VOCAB) if not os.path.isfile(p)]
    if missing:
      raise WeightsError(f"the bundled model is missing from this installation ({', '.join(missing)} not in {ASSETS}); "
                         f"train it with `tfm train` and copy model.safetensors and vocab.json there as {', '.join(missing)}, "
                         f"or pass --model PATH")
    return cls.load(BUNDLED_MODEL, device, dtype, parallel)

  @classmethod
  def open(cls, model: str | os.PathLike, device: Any = None, dtype: str | None = None, parallel: str | None = None,
           source_lang: str | None = None, target_lang: str | None = None) -> Translator:
    """`model` as the command line names it: "bundled" (the model that ships with tfm), else a path for `load`."""
    if model == "bundled":
      if source_lang is not None or target_lang is not None:
        raise InputError("the bundled model translates dates into one format: leave --source-lang and --target-lang out")
      return cls.bundled(device, dtype, parallel)
    return cls.load(model, device, dtype, parallel, source_lang, target_lang)
