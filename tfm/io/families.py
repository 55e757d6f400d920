"""The tokenizers of the checkpoint families people translate with: NLLB-200, M2M100, mBART (cc25 and mBART-50), BART,
Pegasus and T5, read from a Hugging Face checkpoint folder as it is published or as transformers' save_pretrained
writes it. The subword ids come from the folder's files (tfm.io.subwords); the special and language tokens around them
are added here, per family, so that the source language can change from one call to the next."""
from __future__ import annotations

import os
import re
from typing import Iterable, Sequence

from tfm.files import read_json
from tfm.errors import InputError, WeightsError
from tfm.io.subwords import M2M100Pieces, Pipeline, converted_spiece, token_text

# tokenizer_config.json's tokenizer_class -> family; transformers 5 saves a BartTokenizer as RobertaTokenizer (one class)
CLASSES = {"NllbTokenizer": "nllb", "M2M100Tokenizer": "m2m100", "MBartTokenizer": "mbart", "MBart50Tokenizer": "mbart50",
           "BartTokenizer": "bart", "RobertaTokenizer": "bart", "PegasusTokenizer": "pegasus", "T5Tokenizer": "t5"}
CLASSES |= {f"{name}Fast": family for name, family in CLASSES.items() if family != "m2m100"}
# config.json's model_type -> family, when tokenizer_config.json names no class (NLLB uses the M2M100 model class: its
# folders ship tokenizer.json, M2M100's do not; mBART-50 is told from cc25 by its 52 language codes)
MODEL_TYPES = {"m2m_100": "m2m100", "mbart": "mbart", "bart": "bart", "pegasus": "pegasus", "t5": "t5"}
NAMES = {"nllb": "NLLB-200", "m2m100": "M2M100", "mbart": "mBART (cc25)", "mbart50": "mBART-50", "bart": "BART",
         "pegasus": "Pegasus", "t5": "T5"}
# the special tokens of a source sequence around its pieces: "lang" is the source language's token
TEMPLATES = {"nllb": (("lang",), ("eos",)), "nllb_legacy": ((), ("eos", "lang")), "m2m100": (("lang",), ("eos",)),
             "mbart": ((), ("eos", "lang")), "mbart50": (("lang",), ("eos",)), "bart": (("bos",), ("eos",)),
             "pegasus": ((), ("eos",)), "t5": ((), ("eos",))}
# how a language token looks in each multilingual family's vocabulary (the group is the code users pass)
LANGUAGE_TOKENS = {"nllb": r"([a-z]{3}_[A-Z][a-z]{3})", "m2m100": r"__([a-z]{2,3})__", "mbart": r"([a-z]{2}_[A-Z]{2})",
                   "mbart50": r"([a-z]{2}_[A-Z]{2})"}
# M2M100's tokenizer has no language list in its files: transformers fixes it by tokenizer_config's language_codes
M2M100_CODES = {
  "m2m100": "af am ar ast az ba be bg bn br bs ca ceb cs cy da de el en es et fa ff fi fr fy ga gd gl gu ha he hi hr ht hu hy id ig "
            "ilo is it ja jv ka kk km kn ko lb lg ln lo lt lv mg mk ml mn mr ms my ne nl no ns oc or pa pl ps pt ro ru sd si sk sl so "
            "sq sr ss su sv sw ta th tl tn tr uk ur uz vi wo xh yi yo zh zu".split(),
  "wmt21": "en ha is ja cs ru zh de".split()}
BOS = {"nllb": "<s>", "m2m100": "<s>", "mbart": "<s>", "bart": "<s>"}   # the families whose tokenizer class has a bos
FILES = "tokenizer.json, spiece.model (T5, Pegasus) or sentencepiece.bpe.model with vocab.json (M2M100)"


class FolderTokenizer:
  """The tokenizer of an NLLB-200, M2M100, mBART, mBART-50, BART, Pegasus or T5 checkpoint folder, with the interface of
  tfm.io.tokenizer (encode, encode_target, decode, the special ids) and the ids transformers' tokenizer gives:

    family        source sequence (encode)             decoder starts with               languages
    NLLB-200      [src] pieces </s>                    </s>, then forced_bos_id = [tgt]   eng_Latn, fra_Latn, ...
      legacy      pieces </s> [src]   (tokenizer_config's legacy_behaviour: true)
    M2M100        [__src__] pieces </s>                </s>, then forced_bos_id           en, fr, ... (100 or 8)
    mBART cc25    pieces </s> [src]                    decoder_start_id = [tgt]           en_XX, ro_RO, ... (25)
    mBART-50      [src] pieces </s>                    </s>, then forced_bos_id           en_XX, ... (52)
    BART          <s> pieces </s>                      </s> (config.json decides)         none
    Pegasus, T5   pieces </s>                          <pad>                              none

  encode_target gives a target text's pieces alone (the start of a translation, after the tokens above). decode stops
  at the first </s> (a leading one is the decoder start of NLLB, M2M100, mBART-50 and BART, not an end) and drops every
  special and language token, then joins the pieces as transformers' decode(..., skip_special_tokens=True) does,
  including its clean-up of spaces before punctuation where tokenizer_config.json asks for it.

  vocab_size counts every id the checkpoint's embedding has: the added special and language tokens, and M2M100's unused
  "madeup words". Multilingual families need source_lang for encode and target_lang for forced_bos_id or
  decoder_start_id; both are codes of `languages` and can be set again at any time (or passed to encode per call).
  """

  def __init__(self, family: str, pieces: Pipeline | M2M100Pieces, specials: dict[str, str | None],
               source_lang: str | None = None, target_lang: str | None = None, legacy: bool = False):
    self.family, self.pieces, self.legacy = family, pieces, legacy
    ids = {}
    for name, token in specials.items():
      ids[name] = None if token is None else pieces.token_id(token)
      if token is not None and ids[name] is None:
        raise WeightsError(f"the {NAMES[family]} tokenizer has no {name} token {token!r} in its vocabulary; "
                           f"tokenizer_config.json's {name}_token must name a token of the vocabulary")
    self.pad_id, self.eos_id, self.bos_id, self.unk_id = ids["pad"], ids["eos"], ids["bos"], ids["unk"]
    pattern = re.compile(LANGUAGE_TOKENS.get(family, r"(?!)"))
    found = sorted((i, m.group(1)) for token, i in pieces.specials.items() if (m := pattern.fullmatch(token)))
    self.codes = {code: i for i, code in found}
    self.special_ids = set(pieces.specials.values()) | {i for i in ids.values() if i is not None}
    self._source = self._target = None
    self.source_lang, self.target_lang = source_lang, target_lang

  @classmethod
  def from_dir(cls, folder: str | os.PathLike, source_lang: str | None = None, target_lang: str | None = None) -> FolderTokenizer:
    """Read the tokenizer of a checkpoint folder: tokenizer.json where there is one, else the family's SentencePiece files.
    The family is tokenizer_config.json's tokenizer_class, or else config.json's model_type."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder): raise WeightsError(f"{folder} is not a folder; pass the checkpoint folder that holds {FILES}")
    def has(name: str) -> bool: return os.path.isfile(os.path.join(folder, name))
    if not (has("tokenizer.json") or has("spiece.model") or has("sentencepiece.bpe.model")):
      raise WeightsError(f"{folder} has no tokenizer: looked for {FILES}; download them with the checkpoint's other files")
    config, model = _json(folder, "tokenizer_config.json"), _json(folder, "config.json")
    family = _family(folder, config, model, has("tokenizer.json"))
    clean_up = bool(config.get("clean_up_tokenization_spaces", False))
    if has("tokenizer.json"):
      pieces = Pipeline.from_file(os.path.join(folder, "tokenizer.json"), clean_up)
      # transformers skips the clean-up for BPE models, where it would eat real spaces before punctuation
      pieces.clean_up &= not pieces.bpe or bool(config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"))
    elif family in ("t5", "pegasus") and has("spiece.model"):
      pieces = converted_spiece(os.path.join(folder, "spiece.model"), family, config, clean_up)
    elif family == "m2m100" and has("sentencepiece.bpe.model") and has("vocab.json"):
      codes = M2M100_CODES.get(config.get("language_codes", "m2m100"))
      if codes is None: raise WeightsError(f"{folder}/tokenizer_config.json has language_codes={config['language_codes']!r}; "
                                           f"M2M100 tokenizers know {' and '.join(M2M100_CODES)}")
      pieces = M2M100Pieces(folder, codes, int(config.get("num_madeup_words", 8)), clean_up)
    else:
      present = ", ".join(n for n in ("spiece.model", "sentencepiece.bpe.model", "vocab.json") if has(n))
      need = {"m2m100": "sentencepiece.bpe.model and vocab.json", "t5": "spiece.model", "pegasus": "spiece.model"}
      raise WeightsError(f"{folder} holds {present}, but the {NAMES[family]} tokenizer needs tokenizer.json"
                         f"{' or ' + need[family] if family in need else ''}; download tokenizer.json with the checkpoint "
                         f"(transformers' save_pretrained of the tokenizer writes it)")
    specials = {"pad": "<pad>", "eos": "</s>", "unk": "<unk>", "bos": BOS.get(family)}
    for name in specials:
      if f"{name}_token" in config: specials[name] = token_text(config[f"{name}_token"])
    tok = cls(family, pieces, specials, source_lang, target_lang, legacy=bool(config.get("legacy_behaviour", False)))
    if family == "mbart" and len(tok.codes) > 25 and "tokenizer_class" not in config: tok.family = "mbart50"
    return tok

  # --- languages -----------------------------------------------------------------------------------------------------

  @property
  def languages(self) -> list[str]:
    """The language codes this tokenizer knows, in id order (empty for BART, Pegasus and T5)."""
    return list(self.codes)

  def language_id(self, code: str) -> int:
    """The token id of a language code (e.g. "fra_Latn", "fr", "fr_XX")."""
    return self.codes[self._check(code, "language")]

  @property
  def source_lang(self) -> str | None: return self._source

  @source_lang.setter
  def source_lang(self, code: str | None) -> None: self._source = None if code is None else self._check(code, "source language")

  @property
  def target_lang(self) -> str | None: return self._target

  @target_lang.setter
  def target_lang(self, code: str | None) -> None: self._target = None if code is None else self._check(code, "target language")

  @property
  def forced_bos_id(self) -> int | None:
    """The target language's id, forced as the first generated token (transformers' forced_bos_token_id): NLLB, M2M100
    and mBART-50; None for the other families."""
    if self.family not in ("nllb", "m2m100", "mbart50"): return None
    return self.codes[self._need(self._target, "target")]

  @property
  def decoder_start_id(self) -> int | None:
    """The target language's id as the decoder's first token: mBART cc25, which starts from it; None for the others."""
    return self.codes[self._need(self._target, "target")] if self.family == "mbart" else None

  def _check(self, code: str, what: str) -> str:
    if not self.codes:
      raise InputError(f"{NAMES[self.family]} tokenizers have no languages, so no {what} {code!r}; leave it unset")
    if code not in self.codes:
      raise InputError(f"unknown {what} {code!r}: this {NAMES[self.family]} tokenizer knows {', '.join(self.codes)}; pass one of them")
    return code

  def _need(self, code: str | None, side: str) -> str:
    if code is None:
      raise InputError(f"no {side} language: pass {side}_lang=..., one of {', '.join(self.codes)}")
    return code

  # --- text <-> ids --------------------------------------------------------------------------------------------------

  @property
  def vocab_size(self) -> int: return self.pieces.size

  def encode(self, texts: Sequence[str], source_lang: str | None = None) -> list[list[int]]:
    """Each text -> its source sequence: the pieces with the family's special and language tokens (table above).
    source_lang, where given, replaces the tokenizer's source_lang for this call."""
    _texts(texts, "encode")
    code = self._source if source_lang is None else self._check(source_lang, "source language")
    lang = self.codes[self._need(code, "source")] if self.codes else None
    prefix, suffix = TEMPLATES["nllb_legacy" if self.family == "nllb" and self.legacy else self.family]
    special = {"lang": lang, "bos": self.bos_id, "eos": self.eos_id}
    before, after = [special[t] for t in prefix], [special[t] for t in suffix]
    return [before + ids + after for ids in self.pieces.encode(texts)]

  def encode_target(self, texts: Sequence[str]) -> list[list[int]]:
    """Each text -> its pieces alone, without special or language tokens: the start of a translation."""
    return self.pieces.encode(_texts(texts, "encode_target"))

  def decode(self, ids: Iterable[Iterable[int]]) -> list[str]:
    """Each id sequence -> text: stops at the first </s> (not at a leading one), drops special and language tokens."""
    out = []
    for row in ids:
      row = [int(i) for i in row]
      if row[:1] == [self.eos_id]: row = row[1:]
      if self.eos_id in row: row = row[:row.index(self.eos_id)]
      bad = [i for i in row if not 0 <= i < self.vocab_size]
      if bad: raise InputError(f"token id {bad[0]} out of range for vocab_size={self.vocab_size} (ids must be in [0, {self.vocab_size - 1}])")
      out.append(self.pieces.decode([i for i in row if i not in self.special_ids]))
    return out


def _texts(texts: Sequence[str], method: str) -> Sequence[str]:
  if isinstance(texts, str): raise InputError(f"{method} takes a list of strings; wrap a single text as [text]")
  bad = next((n for n, t in enumerate(texts) if not isinstance(t, str)), None)
  if bad is not None: raise InputError(f"text {bad} is {type(texts[bad]).__name__}, not str; give texts as str")
  return texts


def _json(folder: str, name: str) -> dict:
  path = os.path.join(folder, name)
  if not os.path.isfile(path): return {}
  data = read_json(path)
  if not isinstance(data, dict): raise WeightsError(f"{path} must hold a JSON object; download the checkpoint folder again")
  return data


def _family(folder: str, config: dict, model: dict, has_json: bool) -> str:
  """The family named by tokenizer_config.json's tokenizer_class, else by config.json's model_type."""
  supported = ", ".join(sorted(c for c in CLASSES if not c.startswith("Roberta")))
  if "tokenizer_class" in config:
    name = config["tokenizer_class"]
    if name not in CLASSES:
      raise WeightsError(f"{folder}/tokenizer_config.json names tokenizer_class {name!r}, which tfm does not read; "
                         f"it reads {supported}")
    return CLASSES[name]
  kind = model.get("model_type")
  if kind is None:
    raise WeightsError(f"{folder} names no tokenizer: tokenizer_config.json has no tokenizer_class and config.json no "
                       f"model_type; tfm reads {supported}")
  if kind not in MODEL_TYPES:
    raise WeightsError(f"{folder}/config.json has model_type {kind!r}, whose tokenizer tfm does not read; it reads the "
                       f"tokenizers of {', '.join(sorted(MODEL_TYPES))} checkpoints ({supported})")
  return "nllb" if kind == "m2m_100" and has_json else MODEL_TYPES[kind]

