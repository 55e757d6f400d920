"""MarianTokenizer: SentencePiece pieces mapped through vocab.json, as opus-mt folders lay them out.

Behaviour is checked on SentencePiece models trained here from a few lines; agreement with the transformers
MarianTokenizer on the committed fixture folder (and live, where transformers is installed)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import sentencepiece

import tfm
from tfm.io.tokenizer import MarianTokenizer

FIXTURES = Path(__file__).parent / "fixtures"
SOURCE = ["the cat sat on the mat", "a dog ran in the park", "the bird sang a song", "we read books at night"]
TARGET = ["die katze sass auf der matte", "ein hund lief im park", "der vogel sang ein lied", "wir lesen nachts"]


def train(lines: list[str]) -> bytes:
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=40,
                                           normalization_rule_name="identity", hard_vocab_limit=False, minloglevel=2)
  return model.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
  """An opus-mt style folder: source.spm, target.spm, and vocab.json with </s> 0, <unk> 1, the pieces, <pad> last."""
  folder = tmp_path_factory.mktemp("marian_tokenizer")
  pieces: list[str] = []
  for name, lines in (("source.spm", SOURCE), ("target.spm", TARGET)):
    proto = train(lines)
    (folder / name).write_bytes(proto)
    sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    pieces += [sp.id_to_piece(i) for i in range(3, sp.get_piece_size()) if sp.id_to_piece(i) not in pieces]
  vocab = {"</s>": 0, "<unk>": 1, **{p: i + 2 for i, p in enumerate(pieces)}, ">>de<<": len(pieces) + 2, "<pad>": len(pieces) + 3}
  (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
  return folder


@pytest.fixture(scope="module")
def tok(folder) -> MarianTokenizer:
  return MarianTokenizer.from_dir(folder)


def test_specials_come_from_vocab_json(tok):
  assert (tok.eos_id, tok.unk_id, tok.pad_id, tok.bos_id) == (0, 1, tok.vocab_size - 1, None)


def test_encode_maps_source_pieces_through_vocab_json_and_appends_eos(tok, folder):
  sp = sentencepiece.SentencePieceProcessor(model_file=str(folder / "source.spm"))
  pieces = sp.encode("the cat ran", out_type=str)
  vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
  assert tok.encode(["the cat ran"]) == [[vocab[p] for p in pieces] + [0]]
  assert [vocab[p] for p in pieces] != sp.encode("the cat ran")  # vocab.json ids, not the SentencePiece model's own


def test_unknown_text_becomes_unk(tok):
  ids = tok.encode(["the QX cat"])[0]
  assert tok.unk_id in ids and ids[-1] == tok.eos_id


def test_empty_text_is_just_eos(tok):
  assert tok.encode([""]) == [[tok.eos_id]]


def test_leading_language_code_is_one_token(tok):
  ids = tok.encode([">>de<< the cat"])[0]
  assert ids[0] == tok.vocab[">>de<<"] and ids[1:] == tok.encode([" the cat"])[0]


def test_decode_inverts_encode_and_stops_at_eos(tok):
  texts = ["die katze sass im park", "ein vogel"]
  ids = [row + [tok.pad_id, 7, 8] for row in tok.encode(texts)]  # whatever follows eos is not text
  assert tok.decode(ids) == texts


def test_decode_drops_pad_and_unk(tok):
  hund = tok.encode(["hund"])[0][:-1]
  assert tok.decode([[tok.pad_id, *hund, tok.unk_id, tok.eos_id]]) == ["hund"]


def test_decode_of_an_id_outside_the_vocabulary_is_an_input_error(tok):
  with pytest.raises(tfm.InputError, match=f"token id {tok.vocab_size} is not in the Marian vocabulary"):
    tok.decode([[3, tok.vocab_size]])


def test_encode_of_a_bare_string_is_an_input_error(tok):
  with pytest.raises(tfm.InputError, match="wrap a single text"): tok.encode("the cat")


def test_folder_without_the_files_is_a_weights_error(tmp_path, folder):
  (tmp_path / "vocab.json").write_text((folder / "vocab.json").read_text(encoding="utf-8"), encoding="utf-8")
  with pytest.raises(tfm.WeightsError, match="has no source.spm, target.spm"): MarianTokenizer.from_dir(tmp_path)


def test_vocab_without_pad_is_a_weights_error(tmp_path, folder):
  for name in ("source.spm", "target.spm"): (tmp_path / name).write_bytes((folder / name).read_bytes())
  (tmp_path / "vocab.json").write_text(json.dumps({"</s>": 0, "<unk>": 1, "▁the": 2}), encoding="utf-8")
  with pytest.raises(tfm.WeightsError, match="no <pad>"): MarianTokenizer.from_dir(tmp_path)


def test_damaged_sentencepiece_model_is_a_weights_error(tmp_path, folder):
  (tmp_path / "source.spm").write_bytes(b"not a model")
  for name in ("target.spm", "vocab.json"): (tmp_path / name).write_bytes((folder / name).read_bytes())
  with pytest.raises(tfm.WeightsError, match="source.spm is not a SentencePiece model"): MarianTokenizer.from_dir(tmp_path)


def test_fixture_folder_agrees_with_the_transformers_tokenizer():
  expected = json.loads((FIXTURES / "marian_tokenizer.json").read_text(encoding="utf-8"))
  tok = MarianTokenizer.from_dir(FIXTURES / "marian_tiny")
  assert tok.encode(expected["texts"]) == expected["ids"]
  assert tok.decode([row + [tok.pad_id] * 2 for row in expected["ids"]]) == expected["decoded"]


def test_live_transformers_tokenizer_agrees(folder, tok):
  transformers = pytest.importorskip("transformers", reason="transformers not installed: compared with the stored fixture only")
  reference = transformers.MarianTokenizer(str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json"))
  texts = ["the cat sat in the park", "Zebra ©", ">>de<< a song", ""]
  assert tok.encode(texts) == [reference(t)["input_ids"] for t in texts]
  ids = tok.encode(["die katze sang", "ein lied im park"])
  assert tok.decode(ids) == [reference.decode(row, skip_special_tokens=True) for row in ids]
