"""FolderTokenizer: the tokenizers of NLLB-200, M2M100, mBART, mBART-50, BART, Pegasus and T5 checkpoint folders.

Agreement with transformers is checked on the committed fixtures (tests/make_tokenizer_fixtures.py): a small tokenizer
of each family saved as transformers' save_pretrained writes it, and the ids and decodings transformers gave 200 texts.
The rest specifies what the families share: languages, the errors that say how to fix a call or a folder."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest

from tfm.errors import InputError, WeightsError
from tfm.io.families import FolderTokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "tokenizers"
FAMILIES = ("nllb", "nllb_legacy", "m2m100", "mbart", "mbart50", "bart", "pegasus", "t5")
MULTILINGUAL = ("nllb", "nllb_legacy", "m2m100", "mbart", "mbart50")


@functools.cache
def expected(family: str) -> dict:
  return json.loads((FIXTURES / f"{family}.json").read_text(encoding="utf-8"))


@functools.cache
def tokenizer(family: str) -> FolderTokenizer:
  return FolderTokenizer.from_dir(FIXTURES / family)


def copy(family: str, tmp_path: Path, drop: tuple[str, ...] = ()) -> Path:
  """The family's fixture folder copied to tmp_path, without the files named in drop."""
  folder = tmp_path / family
  shutil.copytree(FIXTURES / family, folder)
  for name in drop: (folder / name).unlink()
  return folder


def edit_config(folder: Path, **changes) -> None:
  """Set (or, with None, remove) keys of the folder's tokenizer_config.json."""
  path = folder / "tokenizer_config.json"
  config = json.loads(path.read_text(encoding="utf-8"))
  for key, value in changes.items():
    if value is None: config.pop(key, None)
    else: config[key] = value
  path.write_text(json.dumps(config), encoding="utf-8")


def check_against_transformers(tok: FolderTokenizer, family: str) -> None:
  """Every case of the family's fixture: encode gives transformers' input_ids, encode_target the pieces of its
  text_target ids, decode its decode(..., skip_special_tokens=True)."""
  for case in expected(family)["cases"]:
    text = case["text"]
    assert tok.encode([text], source_lang=case.get("src_lang")) == [case["ids"]], text
    target, specials = case.get("target", case["ids"]), {tok.bos_id, tok.eos_id, *(tok.language_id(c) for c in tok.languages)}
    while target and target[0] in specials: target = target[1:]
    while target and target[-1] in specials: target = target[:-1]
    assert tok.encode_target([text]) == [target], text
    assert tok.decode([case["ids"] + [tok.pad_id] * 3]) == [case["decoded"]], text


@pytest.mark.parametrize("family", FAMILIES)
def test_special_ids_vocab_size_and_languages_are_transformers(family):
  tok, special = tokenizer(family), expected(family)["special"]
  assert (tok.vocab_size, tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == \
         (special["vocab_size"], special["pad_id"], special["eos_id"], special["bos_id"], special["unk_id"])
  assert tok.languages == special["languages"]


@pytest.mark.parametrize("family", FAMILIES)
def test_ids_and_texts_are_transformers(family):
  check_against_transformers(tokenizer(family), family)


@pytest.mark.parametrize("family", ["t5", "pegasus"])
def test_spiece_model_alone_gives_the_same_ids_and_texts(family, tmp_path):
  """Without tokenizer.json, spiece.model is converted as transformers converts it (the fixture script checks that
  transformers gives these expectations from spiece.model alone too)."""
  tok = FolderTokenizer.from_dir(copy(family, tmp_path, drop=("tokenizer.json",)))
  assert tok.vocab_size == expected(family)["special"]["vocab_size"]
  check_against_transformers(tok, family)


@pytest.mark.parametrize("family, name", [("nllb", "nllb"), ("nllb_legacy", "nllb"), ("m2m100", "m2m100"), ("mbart", "mbart"),
                                          ("mbart50", "mbart50"), ("bart", "bart"), ("pegasus", "pegasus"), ("t5", "t5")])
def test_family_comes_from_tokenizer_class(family, name):
  assert tokenizer(family).family == name


@pytest.mark.parametrize("family, model_type, name", [("nllb", "m2m_100", "nllb"), ("m2m100", "m2m_100", "m2m100"),
                                                      ("mbart", "mbart", "mbart"), ("mbart50", "mbart", "mbart50"), ("t5", "t5", "t5")])
def test_family_falls_back_to_config_model_type(family, model_type, name, tmp_path):
  """NLLB checkpoints are model_type m2m_100 (with tokenizer.json); mBART-50 is model_type mbart with 52 languages."""
  folder = copy(family, tmp_path)
  edit_config(folder, tokenizer_class=None)
  (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
  tok = FolderTokenizer.from_dir(folder)
  assert tok.family == name
  case = expected(family)["cases"][5]
  assert tok.encode([case["text"]], source_lang=case.get("src_lang")) == [case["ids"]]


def test_nllb_legacy_behaviour_puts_the_language_after_eos():
  nllb, legacy = tokenizer("nllb"), tokenizer("nllb_legacy")
  pieces = nllb.encode_target(["the cat"])[0]
  eng = nllb.language_id("eng_Latn")
  assert nllb.encode(["the cat"], source_lang="eng_Latn") == [[eng, *pieces, nllb.eos_id]]
  assert legacy.encode(["the cat"], source_lang="eng_Latn") == [[*pieces, legacy.eos_id, eng]]


def test_m2m100_language_tokens_follow_vocab_json():
  tok = tokenizer("m2m100")
  size = len(json.loads((FIXTURES / "m2m100" / "vocab.json").read_text(encoding="utf-8")))
  assert tok.language_id("af") == size and tok.language_id("fr") == size + tok.languages.index("fr")
  assert tok.vocab_size == size + 100 + 8   # 100 languages, then the 8 "madeup words" of the published models


def test_source_language_comes_from_the_constructor_the_attribute_or_the_call():
  tok = FolderTokenizer.from_dir(FIXTURES / "nllb", source_lang="deu_Latn")
  deu, fra = tok.language_id("deu_Latn"), tok.language_id("fra_Latn")
  assert tok.encode(["a"])[0][0] == deu
  assert tok.encode(["a"], source_lang="fra_Latn")[0][0] == fra and tok.source_lang == "deu_Latn"
  tok.source_lang = "fra_Latn"
  assert tok.encode(["a"])[0][0] == fra


@pytest.mark.parametrize("family", MULTILINGUAL)
def test_no_source_language_is_an_error_that_lists_the_codes(family):
  tok = tokenizer(family)
  with pytest.raises(InputError, match="no source language: pass source_lang=..., one of ") as e: tok.encode(["hello"])
  assert all(code in str(e.value) for code in tok.languages)   # every code, however many: they are the choice to make


@pytest.mark.parametrize("family", MULTILINGUAL)
def test_unknown_language_code_is_refused_with_the_codes(family):
  tok = tokenizer(family)
  listed = ", ".join(tok.languages)
  with pytest.raises(InputError, match=f"unknown source language 'xx_YY': .* knows {listed}; pass one of them"):
    FolderTokenizer.from_dir(FIXTURES / family, source_lang="xx_YY")
  with pytest.raises(InputError, match=f"unknown target language 'xx_YY': .* knows {listed}"):
    FolderTokenizer.from_dir(FIXTURES / family, target_lang="xx_YY")
  with pytest.raises(InputError, match=f"unknown source language 'xx_YY': .* knows {listed}"): tok.encode(["a"], source_lang="xx_YY")
  with pytest.raises(InputError, match=f"unknown language 'xx_YY': .* knows {listed}"): tok.language_id("xx_YY")


@pytest.mark.parametrize("family", ["bart", "pegasus", "t5"])
def test_monolingual_families_have_no_languages(family):
  tok = tokenizer(family)
  assert tok.languages == [] and tok.forced_bos_id is None and tok.decoder_start_id is None
  with pytest.raises(InputError, match="have no languages, so no source language 'en'; leave it unset"):
    tok.encode(["a"], source_lang="en")


@pytest.mark.parametrize("family, code, forced, start", [("nllb", "fra_Latn", True, False), ("m2m100", "fr", True, False),
                                                         ("mbart50", "fr_XX", True, False), ("mbart", "ro_RO", False, True)])
def test_target_language_is_forced_bos_or_decoder_start(family, code, forced, start):
  """transformers' forced_bos_token_id for NLLB, M2M100 and mBART-50; mBART cc25's decoder starts from the language."""
  tok = FolderTokenizer.from_dir(FIXTURES / family, target_lang=code)
  assert tok.forced_bos_id == (tok.language_id(code) if forced else None)
  assert tok.decoder_start_id == (tok.language_id(code) if start else None)
  tok.target_lang = None
  with pytest.raises(InputError, match="no target language: pass target_lang=..., one of "):
    tok.forced_bos_id if forced else tok.decoder_start_id


def test_decode_stops_at_the_first_eos_but_not_a_leading_one():
  """A leading </s> is the decoder start token of NLLB, M2M100, mBART-50 and BART, which some callers keep."""
  tok = FolderTokenizer.from_dir(FIXTURES / "nllb", source_lang="eng_Latn")
  pieces, eos = tok.encode_target(["the cat"])[0], tok.eos_id
  fra = tok.language_id("fra_Latn")
  assert tok.decode([[eos, fra, *pieces, eos, *pieces], [*pieces, eos, *pieces], [eos], []]) == ["the cat", "the cat", "", ""]


def test_decode_refuses_ids_out_of_range():
  tok = tokenizer("t5")
  with pytest.raises(InputError, match=rf"token id {tok.vocab_size} out of range for vocab_size={tok.vocab_size}"):
    tok.decode([[5, tok.vocab_size]])


def test_encode_takes_a_list_of_strings():
  with pytest.raises(InputError, match=r"wrap a single text as \[text\]"): tokenizer("t5").encode("hello")
  with pytest.raises(InputError, match="text 1 is bytes, not str"): tokenizer("t5").encode_target(["a", b"b"])


def test_folder_without_tokenizer_files_names_what_it_looked_for(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
  with pytest.raises(WeightsError, match="has no tokenizer: looked for tokenizer.json, spiece.model .* sentencepiece.bpe.model with vocab.json"):
    FolderTokenizer.from_dir(tmp_path)


def test_missing_folder_is_a_weights_error(tmp_path):
  with pytest.raises(WeightsError, match="is not a folder"): FolderTokenizer.from_dir(tmp_path / "absent")


def test_unknown_tokenizer_class_is_refused_by_name(tmp_path):
  folder = copy("t5", tmp_path)
  edit_config(folder, tokenizer_class="BertTokenizer")
  with pytest.raises(WeightsError, match="tokenizer_class 'BertTokenizer', which tfm does not read; it reads BartTokenizer, .*T5Tokenizer"):
    FolderTokenizer.from_dir(folder)


def test_unknown_model_type_is_refused_by_name(tmp_path):
  folder = copy("t5", tmp_path)
  edit_config(folder, tokenizer_class=None)
  (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
  with pytest.raises(WeightsError, match="model_type 'bert', whose tokenizer tfm does not read"): FolderTokenizer.from_dir(folder)


def test_families_without_a_sentencepiece_reader_ask_for_tokenizer_json(tmp_path):
  folder = copy("nllb", tmp_path, drop=("tokenizer.json",))
  (folder / "sentencepiece.bpe.model").write_bytes((FIXTURES / "m2m100" / "sentencepiece.bpe.model").read_bytes())
  with pytest.raises(WeightsError, match="holds sentencepiece.bpe.model, but the NLLB-200 tokenizer needs tokenizer.json"):
    FolderTokenizer.from_dir(folder)


def test_m2m100_without_vocab_json_names_both_files(tmp_path):
  with pytest.raises(WeightsError, match="M2M100 tokenizer needs tokenizer.json or sentencepiece.bpe.model and vocab.json"):
    FolderTokenizer.from_dir(copy("m2m100", tmp_path, drop=("vocab.json",)))


def test_damaged_tokenizer_json_is_a_weights_error(tmp_path):
  folder = copy("bart", tmp_path)
  (folder / "tokenizer.json").write_text("{not json")
  with pytest.raises(WeightsError, match="is not a tokenizer.json the tokenizers library .* can read"): FolderTokenizer.from_dir(folder)
