"""Text <-> subword ids without any special tokens: the part of a checkpoint's tokenizer that its files fix. Either a
tokenizers-library pipeline (transformers' tokenizer.json, or a T5/Pegasus spiece.model converted as transformers
converts it), or M2M100's SentencePiece model with its pieces looked up in vocab.json. tfm.io.families.FolderTokenizer
adds each family's special and language tokens around these ids."""
from __future__ import annotations

import os
import re
from typing import Sequence

import sentencepiece
import tokenizers
from tokenizers import decoders, normalizers, pre_tokenizers

from tfm.files import read_json
from tfm.errors import WeightsError


def clean_up_spaces(text: str) -> str:
  """transformers' clean_up_tokenization, which tokenizer_config.json's clean_up_tokenization_spaces asks decode for:
  the spaces before punctuation and English contractions go."""
  for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                        (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
    text = text.replace(before, after)
  return text


def token_text(token) -> str | None:
  """A special token as tokenizer_config.json writes it: a string, or an AddedToken object with its text in content."""
  return token.get("content") if isinstance(token, dict) else token


class Pipeline:
  """A tokenizers-library tokenizer: its normalizer, pre-tokenizer, model and decoder, never its post-processor (which
  transformers rewrites per language; the families add their specials themselves). `specials`: the added tokens marked
  special, which decode drops.

  A tokenizer.json runs as written. transformers 5 instead rebuilds these families' normalizer, pre-tokenizer and
  decoder from the vocabulary, ignoring the file's: the two agree on files transformers 5 wrote, and can differ on runs
  of spaces, trailing spaces or tabs where an older converter wrote other steps (a T5 file without WhitespaceSplit)."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, clean_up: bool):
    self.tokenizer, self.clean_up = tokenizer, clean_up
    added = tokenizer.get_added_tokens_decoder()
    self.specials = {t.content: i for i, t in added.items() if t.special}
    self.size = max([tokenizer.get_vocab_size(with_added_tokens=True), *(i + 1 for i in added)])
    self.bpe = type(tokenizer.model).__name__ == "BPE"

  @classmethod
  def from_file(cls, path: str, clean_up: bool) -> Pipeline:
    """transformers' tokenizer.json."""
    try:
      return cls(tokenizers.Tokenizer.from_file(path), clean_up)
    except Exception as e:  # the library raises its own exception type for every unreadable file
      raise WeightsError(f"{path} is not a tokenizer.json the tokenizers library {tokenizers.__version__} can read ({e}); "
                         f"download the checkpoint folder again, or upgrade tokenizers") from None

  def token_id(self, token: str) -> int | None: return self.tokenizer.token_to_id(token)

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: list[int]) -> str:
    text = self.tokenizer.decode(ids, skip_special_tokens=True)
    return clean_up_spaces(text) if self.clean_up else text


def load_sentencepiece(path: str) -> sentencepiece.SentencePieceProcessor:
  try:
    return sentencepiece.SentencePieceProcessor(model_file=path)
  except (RuntimeError, OSError) as e:
    raise WeightsError(f"{path} is not a SentencePiece model ({e}); download the checkpoint folder again") from None


def converted_spiece(path: str, family: str, config: dict, clean_up: bool) -> Pipeline:
  """A T5 or Pegasus spiece.model (<pad> 0, </s> 1, <unk> 2) as transformers converts it when a folder has no
  tokenizer.json: a unigram model of the pieces and their scores behind the model's own normalization table.
  T5 keeps the model's ids and appends <extra_id_{n-1}>.. <extra_id_0>; Pegasus puts <mask_1>, <mask_2> and <unk_2>..
  <unk_{offset-1}> after </s> and moves every later piece up by its offset (103)."""
  processor = load_sentencepiece(path)
  vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
  charsmap = precompiled_charsmap(path)
  table = [normalizers.Precompiled(charsmap)] if charsmap else []
  metaspace = dict(replacement="\u2581", prepend_scheme="always", split=True)
  if family == "t5":
    extra = [f"<extra_id_{i}>" for i in reversed(range(int(config.get("extra_ids", 100))))]
    specials, vocab, unk = ["<pad>", "</s>", "<unk>", *extra], vocab + [(t, 0.0) for t in extra], 2
    split = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(**metaspace)])
  else:
    offset = int(config.get("offset", 103))
    masks = [t for t in (token_text(config.get("mask_token_sent", "<mask_1>")), token_text(config.get("mask_token", "<mask_2>"))) if t]
    specials = ["<pad>", "</s>", *masks, *(f"<unk_{i}>" for i in range(2, offset))]
    vocab, unk = [(t, 0.0) for t in specials[:2 + len(masks)]] + [(t, -100.0) for t in specials[2 + len(masks):]] + vocab[2:], len(specials)
    specials.append("<unk>")
    table += [normalizers.Replace(tokenizers.Regex(" {2,}"), " ")] if charsmap else \
             [normalizers.Replace(tokenizers.Regex("\n"), " "), normalizers.Replace(tokenizers.Regex(" {2,}"), " ")]
    split = pre_tokenizers.Metaspace(**metaspace)
  tokenizer = tokenizers.Tokenizer(tokenizers.models.Unigram(vocab, unk_id=unk, byte_fallback=False))
  if table: tokenizer.normalizer = table[0] if len(table) == 1 else normalizers.Sequence(table)
  tokenizer.pre_tokenizer, tokenizer.decoder = split, decoders.Metaspace(**metaspace)
  tokenizer.add_special_tokens([tokenizers.AddedToken(t, normalized=False, special=True) for t in specials])
  return Pipeline(tokenizer, clean_up)


def precompiled_charsmap(path: str) -> bytes:
  """The normalization table of a SentencePiece model: field 2 (precompiled_charsmap) of its NormalizerSpec, read from
  protobuf's wire format (sentencepiece's own reader of it needs the protobuf package)."""
  spec, i = sentencepiece.SentencePieceNormalizer(model_file=path).serialized_normalizer_spec(), 0
  def varint() -> int:
    nonlocal i
    value = shift = 0
    while True:
      byte = spec[i]; i += 1
      value |= (byte & 0x7F) << shift; shift += 7
      if byte < 0x80: return value
  while i < len(spec):
    key = varint()
    if key & 7 == 0: varint()
    elif key & 7 == 2:
      n = varint()
      if key >> 3 == 2: return spec[i:i + n]
      i += n
    else: raise WeightsError(f"{path} has a normalizer spec tfm cannot read (wire type {key & 7}); download the checkpoint folder again")
  return b""


class M2M100Pieces:
  """M2M100's sentencepiece.bpe.model and vocab.json, as transformers' M2M100Tokenizer reads them: the special tokens
  are matched in the text first, every other stretch is cut into pieces by the SentencePiece model, and a piece's id is
  its vocab.json id (<unk> where vocab.json lacks it). The language tokens __xx__ follow the vocabulary in the order of
  `codes`, then `madeup_words` ids that no text maps to."""

  def __init__(self, folder: str, codes: list[str], madeup_words: int, clean_up: bool):
    path = os.path.join(folder, "vocab.json")
    table = read_json(path)
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in table.items()):
      raise WeightsError(f"{path} must map each piece (a string) to its id (an integer), as M2M100's vocab.json does")
    missing = [t for t in ("<s>", "<pad>", "</s>", "<unk>") if t not in table]
    if missing: raise WeightsError(f"{path} has no {', '.join(missing)}; an M2M100 vocab.json holds <s>, <pad>, </s> and <unk>")
    self.processor, self.table, self.unk_id = load_sentencepiece(os.path.join(folder, "sentencepiece.bpe.model")), table, table["<unk>"]
    self.specials = {t: table[t] for t in ("<s>", "<pad>", "</s>", "<unk>")} | {f"__{c}__": len(table) + i for i, c in enumerate(codes)}
    self.pieces, self.special_ids = {i: piece for piece, i in table.items()}, set(self.specials.values())
    self.size, self.clean_up = len(table) + len(codes) + madeup_words, clean_up
    self.split = re.compile("(" + "|".join(re.escape(t) for t in sorted(self.specials, key=len, reverse=True)) + ")")

  def token_id(self, token: str) -> int | None: return self.specials.get(token, self.table.get(token))

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    out = []
    for text in texts:
      ids = []
      for n, chunk in enumerate(self.split.split(text)):
        if n % 2: ids.append(self.specials[chunk])
        elif chunk: ids += [self.table.get(p, self.unk_id) for p in self.processor.encode(chunk, out_type=str)]
      out.append(ids)
    return out

  def decode(self, ids: list[int]) -> str:
    text = self.processor.decode_pieces([self.pieces[i] for i in ids if i in self.pieces and i not in self.special_ids]).strip()
    return clean_up_spaces(text) if self.clean_up else text
