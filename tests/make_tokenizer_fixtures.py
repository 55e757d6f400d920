"""Write the tokenizer fixtures under tests/fixtures/tokenizers/: for each checkpoint family tfm imports (NLLB-200, M2M100,
mBART cc25, mBART-50, BART, Pegasus, T5), a small tokenizer trained here and saved as transformers' `save_pretrained`
writes that family's tokenizer, plus the ids and decodings transformers gives a few hundred texts with it, so
tests/test_tokenizer_families.py checks tfm.io.families.FolderTokenizer without transformers installed.

    .venv/bin/pip install -e ".[hf]" protobuf      # transformers reads the trained SentencePiece models with protobuf
    .venv/bin/python tests/make_tokenizer_fixtures.py          # or name families: ... make_tokenizer_fixtures.py t5 nllb

Made with transformers 5.25.0, tokenizers 0.23.3, sentencepiece 0.2.3 (each <family>.json records the versions).
`tokenizer_files(family, folder)` is the part other fixture scripts use: it writes one family's tokenizer into a model
fixture folder and returns its sizes and special ids, so a tiny model's vocab_size can equal len(tokenizer).

How each is made: SentencePiece models are trained on CORPUS in the layout the family's published model has (fairseq
families: <unk> 0, <s> 1, </s> 2; T5 and Pegasus: <pad> 0, </s> 1, <unk> 2), BPE for NLLB and M2M100, unigram for the
others, with a small custom normalization rule (fullwidth letters and no-break spaces folded) so that the Precompiled
normalizer is exercised without the hundreds of kilobytes of nmt_nfkc's tables. transformers converts them as it converts a published
.model file (from_pretrained on a folder holding only it), then save_pretrained writes the folder; T5 and Pegasus keep
spiece.model beside tokenizer.json, as their published folders do. M2M100 stays a SentencePiece tokenizer in
transformers: vocab.json (fairseq ids) and sentencepiece.bpe.model. BART's byte-level BPE is trained with the
tokenizers library (vocab.json, merges.txt) and loaded by BartTokenizer (which transformers 5 saves under its other
name, RobertaTokenizer).

Languages: NLLB takes any language list (eng_Latn, fra_Latn, deu_Latn here); M2M100, mBART and mBART-50 always add their
fixed lists (100, 25 and 52 codes) after the vocabulary, so their fixtures carry the whole list.

tests/fixtures/tokenizers/
  <family>/        the tokenizer folder (nllb_legacy: the NLLB one with legacy_behaviour true)
  <family>.json    {"versions", "special": tokenizer_files' answer, "cases": [one a line: {"text", "src_lang", "tgt_lang",
                   "ids", "target", "decoded"}]}: ids = tok(text)["input_ids"] with src_lang set; target =
                   tok(text_target=text)["input_ids"] with tgt_lang set, left out where it equals ids (the monolingual
                   families); decoded = tok.decode(ids + 3 pads, skip_special_tokens=True). 200 texts: EDGE_TEXTS and
                   150 drawn from CORPUS's words by a seeded generator.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile

import sentencepiece
import tokenizers
import transformers
from tokenizers import ByteLevelBPETokenizer

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "tokenizers")
VERSIONS = {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__, "sentencepiece": sentencepiece.__version__}
FAMILIES = ("nllb", "nllb_legacy", "m2m100", "mbart", "mbart50", "bart", "pegasus", "t5")
# the source languages the cases cycle through, and the target language, per multilingual family
LANGUAGES = {"nllb": (["eng_Latn", "fra_Latn", "deu_Latn"], "fra_Latn"), "nllb_legacy": (["eng_Latn", "deu_Latn"], "fra_Latn"),
             "m2m100": (["en", "fr", "de"], "de"), "mbart": (["en_XX", "ro_RO", "fr_XX", "de_DE"], "ro_RO"),
             "mbart50": (["en_XX", "fr_XX", "de_DE", "ro_RO"], "fr_XX")}
NLLB_CODES = ["eng_Latn", "fra_Latn", "deu_Latn"]
M2M100_CODES = transformers.models.m2m_100.tokenization_m2m_100.FAIRSEQ_LANGUAGE_CODES

CORPUS = """the cat sat on the mat and the dog slept by the door
a small bird sang a song at night in the old garden
we read books in the evening, and they write letters in the morning
it's twelve o'clock: isn't it time to eat? yes, it is!
the train to Paris leaves at 8:45 from platform 3
she bought 12 apples, 7 pears and 250 grams of cheese
le chat est assis sur le tapis et le chien dort près de la porte
un petit oiseau chantait une chanson la nuit dans le vieux jardin
nous lisons des livres le soir, et ils écrivent des lettres le matin
où est la gare ? c'est à côté de l'hôtel, n'est-ce pas ?
le train pour Paris part à 8 h 45 du quai 3
elle a acheté douze pommes, sept poires et du fromage
die Katze sitzt auf der Matte und der Hund schläft an der Tür
ein kleiner Vogel sang nachts ein Lied im alten Garten
wir lesen abends Bücher, und sie schreiben morgens Briefe
wo ist der Bahnhof? er ist neben dem Hotel, nicht wahr?
der Zug nach München fährt um 8:45 Uhr von Gleis 3 ab
sie kaufte zwölf Äpfel, sieben Birnen und Käse für 5 Euro
pisica stă pe covor și câinele doarme lângă ușă
o pasăre mică a cântat un cântec noaptea în grădina veche
citim cărți seara, iar ei scriu scrisori dimineața
unde este gara? este lângă hotel, nu-i așa?
trenul spre București pleacă la ora 8:45 de la linia 3
ea a cumpărat douăsprezece mere și brânză
The United Nations said on Monday that the talks would resume next week.
La réunion a été reportée à mardi en raison de la grève.
Die Regierung kündigte am Freitag neue Maßnahmen an.
Guvernul a anunțat vineri noi măsuri economice.
numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14 50% #1 (a) [b] "c" -d- e/f
What a day! Quelle journée ! Was für ein Tag! Ce zi!""".split("\n")
RULE_TSV = "FF21\t41\nFF22\t42\nFF41\t61\nFF42\t62\n00A0\t20\n"   # fold Ａ Ｂ ａ ｂ and the no-break space


def train_spm(path: str, model_type: str, fairseq: bool, vocab_size: int) -> None:
  """A SentencePiece model of CORPUS at path, with the special ids of the family's published model."""
  ids = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1) if fairseq else dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
  here = os.getcwd()
  with tempfile.TemporaryDirectory() as tmp, open(path, "wb") as model:
    with open(os.path.join(tmp, "rule.tsv"), "w", encoding="utf-8") as f: f.write(RULE_TSV)
    os.chdir(tmp)   # the model records the rule file's path: a relative one keeps regenerated fixtures byte-identical
    try:
      sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=vocab_size,
                                               model_type=model_type, normalization_rule_tsv="rule.tsv", hard_vocab_limit=False,
                                               character_coverage=1.0, minloglevel=2, **ids)
    finally:
      os.chdir(here)


def build(family: str, folder: str):
  """Write family's tokenizer into folder as save_pretrained writes it; return the transformers tokenizer loaded back."""
  os.makedirs(folder, exist_ok=True)
  # published NLLB, M2M100, mBART-50, Pegasus and T5 folders ask for transformers' clean-up of spaces before punctuation
  clean = family not in ("mbart", "bart")
  with tempfile.TemporaryDirectory() as tmp:
    if family in ("nllb", "nllb_legacy"):
      train_spm(os.path.join(tmp, "sentencepiece.bpe.model"), "bpe", True, 150)
      tok = transformers.NllbTokenizer.from_pretrained(tmp, extra_special_tokens=NLLB_CODES, clean_up_tokenization_spaces=clean,
                                                       legacy_behaviour=family == "nllb_legacy")
    elif family == "m2m100":
      spm = os.path.join(tmp, "sentencepiece.bpe.model")
      train_spm(spm, "bpe", True, 150)
      sp = sentencepiece.SentencePieceProcessor(model_file=spm)
      vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{sp.id_to_piece(i): i + 1 for i in range(3, sp.get_piece_size())}}
      with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f: json.dump(vocab, f)
      # the language tokens are declared special, as transformers 4 declared them (the published folders list them in
      # special_tokens_map.json); without it transformers 5 keeps "__fr__" in decoded text and splits it in encoded text
      codes = M2M100_CODES["m2m100"]
      tok = transformers.M2M100Tokenizer(os.path.join(tmp, "vocab.json"), spm, extra_special_tokens=[f"__{c}__" for c in codes],
                                         clean_up_tokenization_spaces=clean)
    elif family in ("mbart", "mbart50"):
      train_spm(os.path.join(tmp, "sentencepiece.bpe.model"), "unigram", True, 150)
      cls = transformers.MBartTokenizer if family == "mbart" else transformers.MBart50Tokenizer
      tok = cls.from_pretrained(tmp, clean_up_tokenization_spaces=clean)
    elif family in ("pegasus", "t5"):
      train_spm(os.path.join(tmp, "spiece.model"), "unigram", False, 150)
      cls = transformers.PegasusTokenizer if family == "pegasus" else transformers.T5Tokenizer
      tok = cls.from_pretrained(tmp, clean_up_tokenization_spaces=clean)
    elif family == "bart":
      bpe = ByteLevelBPETokenizer()
      bpe.train_from_iterator(CORPUS, vocab_size=300, min_frequency=2, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
      bpe.save_model(tmp)
      tok = transformers.BartTokenizer.from_pretrained(tmp, clean_up_tokenization_spaces=clean)
    else:
      raise SystemExit(f"unknown tokenizer family {family!r}; choose among {', '.join(FAMILIES)}")
    tok.save_pretrained(folder)
    if family in ("pegasus", "t5"): shutil.copy(os.path.join(tmp, "spiece.model"), folder)  # as the published folders have it
  return type(tok).from_pretrained(folder)


def languages(tok) -> list[str]:
  """The language codes tok knows, in id order (empty for the monolingual families)."""
  if isinstance(tok, transformers.M2M100Tokenizer): return list(tok.lang_code_to_id)
  if isinstance(tok, transformers.NllbTokenizer): return [t for t in tok.extra_special_tokens if t in NLLB_CODES]
  if isinstance(tok, (transformers.MBartTokenizer, transformers.MBart50Tokenizer)):
    return sorted(tok.lang_code_to_id, key=tok.lang_code_to_id.get)
  return []


def tokenizer_files(family: str, folder: str) -> dict:
  """Write a small tokenizer of family ("nllb", "m2m100", "mbart", "mbart50", "bart", "pegasus", "t5") into folder, as
  transformers' save_pretrained writes it, and return what a model fixture needs to match it: vocab_size (the rows of
  the embedding: len(tokenizer), plus M2M100's 8 unused "madeup words" as its published models have them), the
  pad/eos/bos/unk ids (None where the family has none) and the language codes in id order."""
  return describe(build(family, folder))


def describe(tok) -> dict:
  """tokenizer_files' answer for a transformers tokenizer."""
  size = len(tok) + (tok.num_madeup_words if isinstance(tok, transformers.M2M100Tokenizer) else 0)
  return {"vocab_size": size, "pad_id": tok.pad_token_id, "eos_id": tok.eos_token_id, "bos_id": tok.bos_token_id,
          "unk_id": tok.unk_token_id, "languages": languages(tok)}


EDGE_TEXTS = ["", " ", "   ", "a", "the", "hello", " leading space", "trailing space ", "  both sides  ",
              "repeated   spaces   inside", "tab\tseparated\twords", "two\nlines", "ÀÉÎÕÜ àéîõü ç", "naïve café au lait",
              "Straße und Größe", "Ａｂ fullwidth ａＢ", "no\u00a0break\u00a0space", "emoji 😀 in the middle", "🎉🎉",
              "中文字符", "日本語のテキストです", "mixed 中 and 😀 and é", "0123456789", "3.14159 and 2,718", "1,000,000 people",
              "!?.,;:'\"()[]{}<>-_/\\@#$%^&*+=~`|", "it's", "don't stop", "l'école d'été", 'He said: "Hi!"',
              "a.b.c", "...", "???", "end.", "hello , world !", "what ? really .", "it ' s fine", "I 'm here , they 've gone",
              "we 're done n't we", "x <unk> y", "a <pad> b <mask>", "codes fra_Latn __fr__ fr_XX <extra_id_0> <mask_1> inside",
              "UPPER CASE TEXT", "MiXeD cAsE", "e-mail: a@b.com", "http://example.org/x?y=1",
              "ă â î ș ț Ă Â Î Ș Ț", "Ş ţ (cedilla forms)", "«guillemets» and „quotes“", "—dash– and … ellipsis"]


def texts(n: int = 150, seed: int = 2026) -> list[str]:
  """EDGE_TEXTS, then n sentences drawn from CORPUS words with random case, digits, punctuation and spacing."""
  rng = random.Random(seed)
  words = sorted({w for line in CORPUS for w in line.split()}) + ["zebra", "quixotic", "Ångström", "naïveté", "Ωmega", "κόσμε"]
  out = list(EDGE_TEXTS)
  while len(out) < len(EDGE_TEXTS) + n:
    sentence = []
    for _ in range(rng.randint(1, 12)):
      w = rng.choice(words)
      r = rng.random()
      if r < 0.1: w = w.upper()
      elif r < 0.2: w = w.capitalize()
      elif r < 0.25: w = str(rng.randint(0, 10 ** rng.randint(1, 6)))
      elif r < 0.3: w += rng.choice(",.!?;:")
      sentence.append(w)
    text = rng.choice([" ", " ", " ", "  "]).join(sentence)
    if rng.random() < 0.1: text = " " + text
    if rng.random() < 0.1: text += " "
    if rng.random() < 0.3: text += rng.choice([".", "!", "?", " ."])
    out.append(text)
  return out


def cases(family: str, tok) -> list[dict]:
  """Each text's source ids (src_lang cycling through the family's source languages), target ids (where they differ
  from the source ids: the multilingual families), and the decoding of the source ids."""
  sources, target_lang = LANGUAGES.get(family, ([None], None))
  out = []
  for n, text in enumerate(texts()):
    case = {"text": text}
    if target_lang:
      case["src_lang"] = tok.src_lang = sources[n % len(sources)]
      case["tgt_lang"] = tok.tgt_lang = target_lang
    case["ids"] = tok(text)["input_ids"]
    target = tok(text_target=text)["input_ids"]
    if target != case["ids"]: case["target"] = target
    case["decoded"] = tok.decode(case["ids"] + [tok.pad_token_id] * 3, skip_special_tokens=True)
    out.append(case)
  return out


def same_without_tokenizer_json(family: str, folder: str) -> None:
  """Check that transformers gives the same ids and texts from the folder's spiece.model alone (T5, Pegasus), so the
  one set of expectations also checks tfm's reading of spiece.model. Texts naming Pegasus's <mask_1> are left out:
  converting spiece.model beside a tokenizer_config.json whose mask_token is <mask_2>, transformers gives <mask_2> id 2
  and <mask_1> id 3, the reverse of the published tokenizer.json (and of tfm, which keeps the published ids)."""
  with tempfile.TemporaryDirectory() as tmp:
    shutil.copytree(folder, tmp, dirs_exist_ok=True)
    os.remove(os.path.join(tmp, "tokenizer.json"))
    alone, full = transformers.AutoTokenizer.from_pretrained(tmp), transformers.AutoTokenizer.from_pretrained(folder)
    for text in texts():
      if family == "pegasus" and "<mask_1>" in text: continue
      ids = full(text)["input_ids"]
      assert alone(text)["input_ids"] == ids, (family, text)
      assert alone.decode(ids, skip_special_tokens=True) == full.decode(ids, skip_special_tokens=True), (family, text)


def main(families: list[str]) -> None:
  """Write the fixture folder and expectations of each family (all when none is named)."""
  unknown = sorted(set(families) - set(FAMILIES))
  if unknown: raise SystemExit(f"unknown tokenizer family {', '.join(unknown)}; choose among {', '.join(FAMILIES)}")
  for family in families or FAMILIES:
    folder = os.path.join(HERE, family)
    shutil.rmtree(folder, ignore_errors=True)
    tok = build(family, folder)
    if family in ("t5", "pegasus"): same_without_tokenizer_json(family, folder)
    head = json.dumps({"versions": VERSIONS, "special": describe(tok)}, ensure_ascii=False)[:-1]
    rows = ",\n".join(json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in cases(family, tok))
    with open(os.path.join(HERE, f"{family}.json"), "w", encoding="utf-8") as f:
      f.write(f'{head}, "cases": [\n{rows}\n]}}\n')   # one case a line: a regenerated fixture diffs by case
  total = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(HERE) for f in files)
  print(f"wrote {HERE} ({total / 1024:.0f} KiB) with {', '.join(f'{k} {v}' for k, v in VERSIONS.items())}")


if __name__ == "__main__":
  main(sys.argv[1:])
