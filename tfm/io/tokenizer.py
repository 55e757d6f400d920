"""Tokenizers: text <-> token ids. A character vocabulary for the bundled model and the synthetic tasks, and a
SentencePiece wrapper for Marian (opus-mt) checkpoints. Both speak the same small interface:

    encode(texts: list[str]) -> list[list[int]]   # each ends with eos
    decode(ids: list[list[int]]) -> list[str]      # stops at eos, drops pad/bos
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import sentencepiece

from tfm.errors import InputError, WeightsError
from tfm.files import read_json, write_text


class CharTokenizer:
  """One id per character after three specials (pad 0, bos 1, eos 2): the vocabulary of the synthetic tasks."""

  SPECIALS = ("<pad>", "<s>", "</s>")
  pad_id, bos_id, eos_id = 0, 1, 2

  def __init__(self, chars: Iterable[str]):
    self.chars = list(chars)
    bad = [c for c in self.chars if not isinstance(c, str) or len(c) != 1]
    if bad: raise InputError(f"CharTokenizer takes single characters, got {bad[0]!r}; pass a string such as 'abc'")
    if len(set(self.chars)) != len(self.chars):
      dup = next(c for c in self.chars if self.chars.count(c) > 1)
      raise InputError(f"character {dup!r} appears twice in the vocabulary; give each character once")
    self.index = {c: i + len(self.SPECIALS) for i, c in enumerate(self.chars)}

  @property
  def vocab_size(self) -> int: return len(self.SPECIALS) + len(self.chars)

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    """Each text -> its character ids followed by eos."""
    if isinstance(texts, str): raise InputError("encode takes a list of strings; wrap a single text as [text]")
    out = []
    for n, text in enumerate(texts):
      unknown = [c for c in text if c not in self.index]
      if unknown:
        raise InputError(f"text {n} ({text!r}) has character {unknown[0]!r}, which is not in the vocabulary; "
                         f"known characters: {''.join(self.chars)!r}")
      out.append([self.index[c] for c in text] + [self.eos_id])
    return out

  def encode_target(self, texts: Sequence[str]) -> list[list[int]]:
    """Each text -> its character ids without eos: the start of a translation (one vocabulary for both sides)."""
    return [row[:-1] for row in self.encode(texts)]

  def decode(self, ids: Iterable[Iterable[int]]) -> list[str]:
    """Each id sequence -> text: stops at the first eos, drops pad and bos."""
    out = []
    for row in ids:
      text = []
      for i in (int(i) for i in row):
        if i == self.eos_id: break
        if i in (self.pad_id, self.bos_id): continue
        if not 0 <= i < self.vocab_size:
          raise InputError(f"token id {i} out of range for vocab_size={self.vocab_size} (ids must be in [0, {self.vocab_size - 1}])")
        text.append(self.chars[i - len(self.SPECIALS)])
      out.append("".join(text))
    return out

  def to_dict(self) -> dict:
    return {"type": "char", "chars": "".join(self.chars), "pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id}

  def save(self, path: str | os.PathLike) -> None:
    """Write the vocabulary as JSON, atomically (a temp file in the same folder renamed into place)."""
    write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1))

  @classmethod
  def load(cls, path: str | os.PathLike) -> CharTokenizer:
    """Read a vocabulary written by `save`."""
    try:
      with open(path, encoding="utf-8") as f: d = json.load(f)
    except json.JSONDecodeError as e:
      raise WeightsError(f"{os.fspath(path)} is not a character vocabulary (invalid JSON: {e}); write one with CharTokenizer.save") from None
    expected = {"type": "char", "pad_id": cls.pad_id, "bos_id": cls.bos_id, "eos_id": cls.eos_id}
    if not isinstance(d, dict) or any(d.get(k) != v for k, v in expected.items()) or not isinstance(d.get("chars"), str):
      raise WeightsError(f"{os.fspath(path)} is not a character vocabulary: expected a JSON object with "
                         f"type='char', a string 'chars' and ids {expected}; write one with CharTokenizer.save")
    return cls(d["chars"])


class MarianTokenizer:
  """SentencePiece pieces looked up in a Marian vocabulary: the tokenizer of opus-mt checkpoint folders.

  Text is cut into pieces by source.spm and each piece is mapped to its id in vocab.json (not to the SentencePiece
  model's own ids; a piece vocab.json lacks becomes <unk>), then eos is appended. Decoding maps ids back to pieces,
  drops the specials (<pad>, <unk>) and joins the pieces with target.spm. A leading language code such as ">>de<<"
  (multilingual models) is one token. Marian has no bos: its decoder starts from pad (the config's start_id).
  """

  UNK, EOS, PAD = "<unk>", "</s>", "<pad>"
  bos_id = None

  def __init__(self, source: sentencepiece.SentencePieceProcessor, target: sentencepiece.SentencePieceProcessor,
               vocab: dict[str, int]):
    missing = [t for t in (self.UNK, self.EOS, self.PAD) if t not in vocab]
    if missing: raise WeightsError(f"the Marian vocabulary has no {', '.join(missing)}; vocab.json must contain <unk>, </s> and <pad>")
    self.source, self.target, self.vocab = source, target, vocab
    self.pieces = {i: piece for piece, i in vocab.items()}
    self.unk_id, self.eos_id, self.pad_id = vocab[self.UNK], vocab[self.EOS], vocab[self.PAD]

  @classmethod
  def from_dir(cls, folder: str | os.PathLike) -> MarianTokenizer:
    """Read source.spm, target.spm and vocab.json from a Marian checkpoint folder."""
    folder = os.fspath(folder)
    if os.path.exists(os.path.join(folder, "target_vocab.json")):
      raise WeightsError(f"{folder} has separate source and target vocabularies (target_vocab.json), which tfm does not support")
    paths = [os.path.join(folder, name) for name in ("source.spm", "target.spm", "vocab.json")]
    absent = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
    if absent:
      raise WeightsError(f"{folder} has no {', '.join(absent)}; a Marian tokenizer needs source.spm, target.spm and vocab.json "
                         f"(as opus-mt checkpoint folders have them)")
    processors = []
    for path in paths[:2]:
      try:
        processors.append(sentencepiece.SentencePieceProcessor(model_file=path))
      except (RuntimeError, OSError) as e:
        raise WeightsError(f"{path} is not a SentencePiece model ({e}); download the checkpoint folder again") from None
    vocab = read_json(paths[2])
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()):
      raise WeightsError(f"{paths[2]} must map each piece (a string) to its id (an integer)")
    return cls(*processors, vocab)

  @property
  def vocab_size(self) -> int: return len(self.vocab)

  def encode_target(self, texts: Sequence[str]) -> list[list[int]]:
    """Each text -> the vocab.json ids of its target.spm pieces, without eos: the start of a translation."""
    if isinstance(texts, str): raise InputError("encode_target takes a list of strings; wrap a single text as [text]")
    return [[self.vocab.get(piece, self.unk_id) for piece in self.target.encode(text, out_type=str)] for text in texts]

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    """Each text -> the vocab.json ids of its source.spm pieces, then eos."""
    if isinstance(texts, str): raise InputError("encode takes a list of strings; wrap a single text as [text]")
    out = []
    for text in texts:
      code = []
      if text.startswith(">>") and (end := text.find("<<")) != -1: code, text = [text[:end + 2]], text[end + 2:]
      pieces = code + self.source.encode(text, out_type=str)
      out.append([self.vocab.get(piece, self.unk_id) for piece in pieces] + [self.eos_id])
    return out

  def decode(self, ids: Iterable[Iterable[int]]) -> list[str]:
    """Each id sequence -> text: stops at the first eos, drops pad and unk, joins the pieces with target.spm."""
    out = []
    for row in ids:
      pieces = []
      for i in (int(i) for i in row):
        if i == self.eos_id: break
        if i not in self.pieces:
          raise InputError(f"token id {i} is not in the Marian vocabulary (vocab_size={self.vocab_size}); "
                           f"decode ids the model produced with this folder's vocab.json")
        if i not in (self.pad_id, self.unk_id): pieces.append(self.pieces[i])
      # pieces the target model does not know come back verbatim, with their word-start marks still in them
      out.append(self.target.decode_pieces(pieces).replace("\u2581", " ").strip())
    return out
