"""The checkpoints the translate benchmark decodes (SHAPES): real models' sizes with random weights, each made once
with transformers in tfm's cache folder (bench/<name>) and converted once for CTranslate2 (bench/<name>-ct2).

  opus  opus-mt-en-de's MarianMTModel: d_model 512, 6+6 layers, 8 heads, FFN 2048, swish, shared vocabulary 58,101
        (</s> 0, <unk> 1, <pad> 58100, the decoder's start token); the checkpoint forces eos as the last token.
  nllb  NLLB-200-distilled-600M's M2M100ForConditionalGeneration: d_model 1024, 12+12 layers, 16 heads, FFN 4096,
        relu, vocabulary 256,206 (<s> 0, <pad> 1, </s> 2, <unk> 3), 1024 positions, ~2.5 GB in float32; every output
        starts with the target language, eng_Latn (256047, its id in the real vocabulary), which
        generation_config.json names as forced_bos_token_id.

No tokenizer is involved: a source is ids, and CTranslate2's vocabulary is the id strings ("17" is token 17) with
the shape's special tokens at their ids, which is all its converters read of a tokenizer (_Vocabulary).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.machine import cache_dir

OPUS = dict(vocab_size=58101, d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
            decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_position_embeddings=512,
            pad_token_id=58100, eos_token_id=0, decoder_start_token_id=58100, activation_function="swish",
            scale_embedding=True, share_encoder_decoder_embeddings=True)
NLLB = dict(vocab_size=256206, d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
            decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096, max_position_embeddings=1024,
            activation_function="relu", scale_embedding=True, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            decoder_start_token_id=2)
ENG_LATN = 256047


@dataclass(frozen=True)
class Shape:
  """One checkpoint of the benchmark: how transformers makes it, the special tokens CTranslate2's vocabulary names,
  and what every system must do alike to decode it."""
  name: str                   # the folder under tfm's cache: bench/<name>, and bench/<name>-ct2 for CTranslate2
  model_class: str            # transformers' class, which makes the folder and decodes it in the torch worker
  config_class: str
  config: dict[str, Any]      # the config class's arguments
  specials: dict[int, str]    # CTranslate2's token strings for these ids; every other id i is the string "i"
  first_word: int             # sources draw ids from [first_word, vocab_size - 1)
  compared: int               # the leading output tokens whose ids are compared across systems
  forced_bos: int | None = None   # the target-language token that every system forces as the first output
  generation: dict[str, Any] = field(default_factory=dict)   # set on the model's generation_config before saving
  bad_words: list[list[int]] | None = None   # transformers' bad_words_ids (CTranslate2 drops Marian's <pad> itself)

  @property
  def vocab_size(self) -> int: return self.config["vocab_size"]

  @property
  def eos(self) -> int: return self.config["eos_token_id"]

  def token(self, i: int) -> str:
    """Token id -> CTranslate2's token string."""
    return self.specials.get(i, str(i))

  def token_ids(self) -> dict[str, int]:
    """CTranslate2's token string -> token id."""
    return {self.token(i): i for i in range(self.vocab_size)}


SHAPES = {
  # 32 tokens and min = max length: the checkpoint's forced_eos_token_id makes tfm and transformers end on eos at the
  # 32nd, which CTranslate2 does not apply, so 31 are compared
  "opus": Shape("opus-shaped", "MarianMTModel", "MarianConfig", {**OPUS, "bad_words_ids": [[OPUS["pad_token_id"]]]},
                {0: "</s>", 1: "<unk>", OPUS["pad_token_id"]: "<pad>"}, first_word=3, compared=31,
                bad_words=[[OPUS["pad_token_id"]]]),
  "nllb": Shape("nllb-shaped", "M2M100ForConditionalGeneration", "M2M100Config", NLLB,
                {0: "<s>", 1: "<pad>", 2: "</s>", 3: "<unk>", ENG_LATN: "eng_Latn"}, first_word=4, compared=32,
                forced_bos=ENG_LATN, generation={"forced_bos_token_id": ENG_LATN}),
}


def model_dir(name: str | Shape = "opus") -> Path:
  """The checkpoint folder of SHAPES[name] (or of a Shape given), made on first use (random weights, seed 0) and then
  reused."""
  shape = SHAPES[name] if isinstance(name, str) else name
  folder = cache_dir() / "bench" / shape.name
  if not (folder / "model.safetensors").exists():
    import torch
    import transformers
    torch.manual_seed(0)
    model = getattr(transformers, shape.model_class)(getattr(transformers, shape.config_class)(**shape.config))
    for key, value in shape.generation.items(): setattr(model.generation_config, key, value)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    os.replace(tmp, folder)
  return folder


def sources(shape: Shape, batch: int, length: int) -> list[list[int]]:
  """batch sources of `length` ids each, the last one eos, the same on every call."""
  import numpy as np
  rng = np.random.default_rng(0)
  ids = rng.integers(shape.first_word, shape.vocab_size - 1, (batch, length - 1))
  return [row + [shape.eos] for row in ids.tolist()]


class _Vocabulary:
  """What CTranslate2's Marian and M2M100 converters read of a tokenizer: the vocabulary (Shape.token), the bos, eos
  and unk tokens, and the language token among the additional special tokens."""
  bos_token, eos_token, unk_token = "<s>", "</s>", "<unk>"

  def __init__(self, shape: Shape):
    self.shape = shape
    languages = [] if shape.forced_bos is None else [shape.token(shape.forced_bos)]
    self.special_tokens_map = {"additional_special_tokens": languages}

  def get_vocab(self) -> dict[str, int]: return self.shape.token_ids()

  def convert_ids_to_tokens(self, i: int) -> str: return self.shape.token(i)


def ct2_dir(name: str | Shape) -> Path:
  """The CTranslate2 (float32) conversion of SHAPES[name]'s folder (or a Shape's), made on first use."""
  folder, shape = model_dir(name), SHAPES[name] if isinstance(name, str) else name
  out = folder.with_name(shape.name + "-ct2")
  if not (out / "model.bin").exists():
    from ctranslate2.converters import TransformersConverter
    class Converter(TransformersConverter):
      def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs): return _Vocabulary(shape)
    Converter(str(folder)).convert(str(out), quantization=None, force=True)
  return out
