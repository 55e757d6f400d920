"""Tokenizers: text <-> token ids. A character vocabulary for the bundled model and the synthetic tasks, and a
SentencePiece wrapper for Marian (opus-mt) checkpoints. Both speak the same small interface:

    encode(texts: list[str]) -> list[list[int]]   # each ends with eos
    decode(ids: list[list[int]]) -> list[str]      # stops at eos, drops pad/bos
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Iterable, Sequence

from tfm.errors import InputError, WeightsError


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
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-", suffix=".json")
    try:
      with os.fdopen(fd, "w", encoding="utf-8") as f: json.dump(self.to_dict(), f, ensure_ascii=False, indent=1)
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp): os.unlink(tmp)
      raise

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
