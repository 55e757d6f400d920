"""Write the interop fixtures under tests/fixtures/: small foreign models with non-trivial weights, their inputs, and
the outputs PyTorch and transformers computed for them, so the tests check tfm's importers without either installed.

    .venv/bin/pip install -e ".[hf,digits]"   # torch==2.13.0, transformers, scikit-learn: only this script needs them
    .venv/bin/python tests/make_fixtures.py            # or name groups: tests/make_fixtures.py vit digits

Made with torch 2.13.0+cpu, transformers 5.23.0, sentencepiece 0.2.3, safetensors 0.8.0 (each fixture also records
the versions in its metadata); the ViT and digits fixtures with transformers 5.24.0 and scikit-learn 1.9.1. Every
bias, LayerNorm gain and bias, final_logits_bias and the pad embedding row is random, so an importer that drops or
misplaces any of them fails the tests. Shapes match the "tiny" preset
(d_model 32, 4 heads, d_ff 64, vocab 64) and the test batch (2 sequences, source length 7, target length 5).

tests/fixtures/
  torch_<variant>.safetensors    an nn.Transformer state dict (PyTorch's names); metadata: constructor kwargs, versions
  torch_<variant>.npz            src (2,7,32), tgt (2,5,32), masks, expected memory and decoder output
  marian_tiny/                   a MarianMTModel checkpoint as save_pretrained writes it, plus a Marian tokenizer
                                 (source.spm, target.spm trained here on a few lines; vocab.json)
  marian_tiny.npz                src and tgt ids, expected encoder output and logits
  marian_decoding.json           transformers' generate on marian_tiny with repetition_penalty, no_repeat_ngram_size,
                                 bad_words_ids and decoder-input prefixes: ids and beam scores
  marian_tokenizer.json          texts, the ids the transformers MarianTokenizer gives them, and its decodings
  vit_<variant>/                 a ViTForImageClassification or ViTModel checkpoint as save_pretrained writes it
  vit_<variant>.npz              pixels (2, C, H, W), expected last_hidden_state, logits (with a head) and every
                                 layer's attention weights (2, heads, tokens, tokens)
  digits_test.npz                the held-out split of scikit-learn's load_digits that the bundled classifier never saw
                                 in training (tfm.training.digits.digits_split): 360 images (0..16) and their labels

The ViT variants (d_model 16, 4 heads, FFN 32, 2 layers): "c1" greyscale 8 x 8 in 4 x 4 patches, 3 classes; "c3" RGB
12 x 12 in 4 x 4 patches, 5 named classes, relu, layer_norm_eps 1e-6; "model_c3" a ViTModel (no head, no pooler) with
qkv_bias false. Every weight, bias, LayerNorm gain and bias, class token and position embedding is random.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import sys

import numpy as np
import safetensors
import sentencepiece
import torch
import transformers
from safetensors.torch import save_file
from transformers import MarianConfig, MarianMTModel, ViTConfig, ViTForImageClassification, ViTModel
from transformers import MarianTokenizer as HFMarianTokenizer

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
VERSIONS = {"torch": torch.__version__, "transformers": transformers.__version__,
            "sentencepiece": sentencepiece.__version__, "safetensors": safetensors.__version__}
D, HEADS, FF, VOCAB, B, S, T = 32, 4, 64, 64, 2, 7, 5
TORCH_VARIANTS = {
  "post_norm_relu": dict(num_encoder_layers=2, num_decoder_layers=2, norm_first=False, activation="relu"),
  "pre_norm_gelu": dict(num_encoder_layers=1, num_decoder_layers=1, norm_first=True, activation="gelu", layer_norm_eps=1e-6),
}
PAD, EOS = VOCAB - 1, 0  # the opus-mt layout: </s> is 0, <pad> the last id and the decoder's start token
MARIAN_SRC = np.array([[5, 9, 12, 33, EOS, PAD, PAD], [7, 8, 9, 10, 11, 40, EOS]], dtype=np.int64)
MARIAN_TGT = np.array([[PAD, 14, 15, 16, 17], [PAD, 20, 21, 22, 23]], dtype=np.int64)
SOURCE_LINES = ["the cat sat on the mat", "a dog ran in the park", "the bird sang a song at night",
                "we read books in the garden", "she sells sea shells by the shore", "my friend lives in a small town",
                "the quick brown fox jumps over the lazy dog", "they went to the market yesterday"]
TARGET_LINES = ["die katze sass auf der matte", "ein hund lief im park", "der vogel sang ein lied in der nacht",
                "wir lesen buecher im garten", "sie verkauft muscheln am ufer", "mein freund wohnt in einer kleinen stadt",
                "der schnelle braune fuchs springt ueber den faulen hund", "sie gingen gestern zum markt"]
TOKENIZER_TEXTS = ["the cat sat in the garden", "a bird sang", "Zürich ©", "", ">>de<< the dog"]


def perturb(named: dict[str, torch.Tensor], rng: np.random.Generator, fixed=lambda name, p: "embed_positions" in name) -> None:
  """Random values everywhere, in place: matrices N(0, 0.2), biases N(0, 0.3), LayerNorm gains 1 + N(0, 0.2); not in
  the tensors `fixed` names (default: sinusoid tables, which are not weights)."""
  seen = set()
  with torch.no_grad():
    for name, p in named.items():
      if id(p) in seen or fixed(name, p): continue  # a tied tensor once
      seen.add(id(p))
      norm = "norm" in name
      base, scale = (1.0 if norm and name.endswith("weight") else 0.0), (0.2 if norm or p.ndim == 2 else 0.3)
      p.copy_(torch.from_numpy(base + scale * rng.standard_normal(tuple(p.shape))).to(p.dtype))


def torch_fixture(variant: str, kwargs: dict, rng: np.random.Generator) -> None:
  torch.manual_seed(0)
  model = torch.nn.Transformer(d_model=D, nhead=HEADS, dim_feedforward=FF, dropout=0.0, batch_first=True, **kwargs).eval()
  perturb(dict(model.named_parameters()), rng)
  src = rng.standard_normal((B, S, D)).astype(np.float32)
  tgt = rng.standard_normal((B, T, D)).astype(np.float32)
  src_pad = np.array([[False] * 5 + [True] * 2, [False] * 7])  # True = pad, PyTorch's convention
  tgt_mask = torch.nn.Transformer.generate_square_subsequent_mask(T)  # float: 0 on and below the diagonal, -inf above
  # autograd stays on: it keeps the encoder off its inference fast path, which writes zeros at padded positions
  memory = model.encoder(torch.from_numpy(src), src_key_padding_mask=torch.from_numpy(src_pad))
  out = model.decoder(torch.from_numpy(tgt), memory, tgt_mask=tgt_mask, memory_key_padding_mask=torch.from_numpy(src_pad))
  meta = {"kwargs": json.dumps({"d_model": D, "nhead": HEADS, "dim_feedforward": FF, **kwargs}), **VERSIONS}
  save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(HERE, f"torch_{variant}.safetensors"), metadata=meta)
  np.savez_compressed(os.path.join(HERE, f"torch_{variant}.npz"), src=src, tgt=tgt, src_key_padding_mask=src_pad,
                      tgt_mask=tgt_mask.numpy(), memory=memory.detach().numpy(), output=out.detach().numpy())


def train_spm(lines: list[str], vocab_size: int) -> bytes:
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                                           normalization_rule_name="identity", hard_vocab_limit=False, minloglevel=2)
  return model.getvalue()


def marian_tokenizer_files(folder: str) -> None:
  """source.spm, target.spm and a joint vocab.json laid out as opus-mt's: </s> 0, <unk> 1, pieces, >>de<<, <pad> last."""
  pieces: list[str] = []
  for name, lines in (("source.spm", SOURCE_LINES), ("target.spm", TARGET_LINES)):
    proto = train_spm(lines, 60)
    with open(os.path.join(folder, name), "wb") as f: f.write(proto)
    sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    pieces += [sp.id_to_piece(i) for i in range(sp.get_piece_size())
               if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)) and sp.id_to_piece(i) not in pieces]
  pieces = pieces[:VOCAB - 4]  # room for </s>, <unk>, >>de<< and <pad>; pieces cut here encode as <unk>
  vocab = {"</s>": EOS, "<unk>": 1, **{p: i + 2 for i, p in enumerate(pieces)}, ">>de<<": len(pieces) + 2, "<pad>": PAD}
  assert len(vocab) == VOCAB and sorted(vocab.values()) == list(range(VOCAB)), "vocab.json must cover every id once"
  with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f: json.dump(vocab, f, ensure_ascii=False, indent=1)
  with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
    json.dump({"source_lang": "en", "target_lang": "de", "model_max_length": 64, "separate_vocabs": False}, f, indent=1)


def marian_fixture(rng: np.random.Generator) -> None:
  folder = os.path.join(HERE, "marian_tiny")
  shutil.rmtree(folder, ignore_errors=True)
  config = MarianConfig(vocab_size=VOCAB, d_model=D, encoder_layers=2, decoder_layers=2, encoder_attention_heads=HEADS,
                        decoder_attention_heads=HEADS, encoder_ffn_dim=FF, decoder_ffn_dim=FF, max_position_embeddings=64,
                        activation_function="swish", scale_embedding=True, pad_token_id=PAD, decoder_start_token_id=PAD,
                        eos_token_id=EOS, forced_eos_token_id=EOS, attn_implementation="eager")
  torch.manual_seed(0)
  model = MarianMTModel(config).eval()
  perturb({**dict(model.named_parameters()), "final_logits_bias": model.final_logits_bias}, rng)
  assert model.model.shared.weight[PAD].abs().sum() > 0 and model.final_logits_bias.abs().sum() > 0
  model.save_pretrained(folder)
  marian_tokenizer_files(folder)
  src, tgt = torch.from_numpy(MARIAN_SRC), torch.from_numpy(MARIAN_TGT)
  with torch.no_grad():
    memory = model.model.encoder(input_ids=src, attention_mask=src != PAD).last_hidden_state
    logits = model(input_ids=src, attention_mask=src != PAD, decoder_input_ids=tgt).logits
  np.savez_compressed(os.path.join(HERE, "marian_tiny.npz"), src=MARIAN_SRC, tgt=MARIAN_TGT, memory=memory.numpy(),
                      logits=logits.numpy(), versions=json.dumps(VERSIONS))

  tok = HFMarianTokenizer(os.path.join(folder, "source.spm"), os.path.join(folder, "target.spm"), os.path.join(folder, "vocab.json"))
  ids = [tok(text)["input_ids"] for text in TOKENIZER_TEXTS]
  padded = [row + [PAD] * 2 for row in ids]
  expected = {"texts": TOKENIZER_TEXTS, "ids": ids, "decoded": [tok.decode(row, skip_special_tokens=True) for row in padded],
              "versions": VERSIONS}
  with open(os.path.join(HERE, "marian_tokenizer.json"), "w", encoding="utf-8") as f: json.dump(expected, f, ensure_ascii=False, indent=1)


VIT_SIZES = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32, patch_size=4)
VIT_VARIANTS = {
  "c1": dict(head=True, image_size=8, num_channels=1, num_labels=3),
  "c3": dict(head=True, image_size=12, num_channels=3, hidden_act="relu", layer_norm_eps=1e-6,
             id2label={0: "cat", 1: "dog", 2: "bird", 3: "fish", 4: "frog"}),
  "model_c3": dict(head=False, image_size=12, num_channels=3, qkv_bias=False),
}


def vit_fixture(variant: str, spec: dict, rng: np.random.Generator) -> None:
  folder = os.path.join(HERE, f"vit_{variant}")
  shutil.rmtree(folder, ignore_errors=True)
  spec = dict(spec)
  head = spec.pop("head")
  config = ViTConfig(**VIT_SIZES, **spec, attn_implementation="eager")
  torch.manual_seed(0)
  model = (ViTForImageClassification(config) if head else ViTModel(config, add_pooling_layer=False)).eval()
  perturb(dict(model.named_parameters()), rng)
  model.save_pretrained(folder)
  pixels = rng.standard_normal((2, config.num_channels, config.image_size, config.image_size)).astype(np.float32)
  with torch.no_grad():
    out = model(torch.from_numpy(pixels), output_attentions=True)
    hidden = (model.vit if head else model)(torch.from_numpy(pixels)).last_hidden_state   # after the final layernorm
  expected = {"pixels": pixels, "last_hidden_state": hidden.numpy(), "attentions": np.stack([a.numpy() for a in out.attentions])}
  if head: expected["logits"] = out.logits.numpy()
  np.savez_compressed(os.path.join(HERE, f"vit_{variant}.npz"), **expected, versions=json.dumps(VERSIONS))


def digits_fixture() -> None:
  """The digits held out from training, as tfm.training.digits.digits_split draws them (needs scikit-learn)."""
  from tfm.training.digits import digits_split
  split = digits_split()
  np.savez_compressed(os.path.join(HERE, "digits_test.npz"), images=split.test_images.astype(np.uint8), labels=split.test_labels.astype(np.uint8))


# decoding rules that depend on the hypotheses, as transformers' generate applies them to the committed Marian model
DECODING_CASES = [dict(num_beams=1), dict(num_beams=4), dict(num_beams=1, repetition_penalty=1.5),
                  dict(num_beams=4, repetition_penalty=1.5), dict(num_beams=1, no_repeat_ngram_size=2),
                  dict(num_beams=4, no_repeat_ngram_size=2), dict(num_beams=1, bad_words_ids=[[PAD], [28, 28], [43, 46]]),
                  dict(num_beams=4, bad_words_ids=[[PAD], [28, 28], [43, 46]]),
                  dict(num_beams=4, no_repeat_ngram_size=3, repetition_penalty=1.3, num_return_sequences=2)]


def decoding_fixture() -> None:
  """marian_decoding.json: per case, transformers' generate settings, its ids (start token dropped) and, for beam
  search, its sequence scores, on marian_tiny and its committed source batch; and greedy continuations of target
  prefixes (given to transformers as decoder_input_ids)."""
  folder = os.path.join(HERE, "marian_tiny")
  model = MarianMTModel.from_pretrained(folder).eval()
  src = torch.from_numpy(np.load(os.path.join(HERE, "marian_tiny.npz"))["src"])
  cases = []
  for settings in DECODING_CASES:
    with torch.no_grad():
      out = model.generate(src, attention_mask=src != PAD, max_length=16, output_scores=True, return_dict_in_generate=True,
                           **settings)
    case = {"settings": settings, "ids": out.sequences[:, 1:].tolist()}
    if settings["num_beams"] > 1: case["scores"] = out.sequences_scores.tolist()
    cases.append(case)
  prefixes = []
  for row, prefix in enumerate(([43, 12], [46])):
    with torch.no_grad():
      out = model.generate(src[row:row + 1], attention_mask=src[row:row + 1] != PAD, max_length=16,
                           decoder_input_ids=torch.tensor([[PAD] + prefix]), num_beams=1)
    prefixes.append({"row": row, "prefix": prefix, "ids": out[0, 1:].tolist()})
  with open(os.path.join(HERE, "marian_decoding.json"), "w", encoding="utf-8") as f:
    json.dump({"src": src.tolist(), "max_len": 15, "cases": cases, "prefixes": prefixes, "versions": VERSIONS}, f, indent=1)


GROUPS = ("torch", "marian", "vit", "digits", "decoding")


def main(groups: list[str]) -> None:
  """Write the fixtures of the given groups (all when none is named); each group draws from its own seeded generator,
  so rewriting one leaves the others as committed."""
  unknown = sorted(set(groups) - set(GROUPS))
  if unknown: raise SystemExit(f"unknown fixture group(s) {', '.join(unknown)}; choose among {', '.join(GROUPS)}")
  groups = groups or list(GROUPS)
  os.makedirs(HERE, exist_ok=True)
  if "torch" in groups or "marian" in groups:
    rng = np.random.default_rng(2024)   # the torch fixtures draw first, then Marian, from the one generator
    for variant, kwargs in TORCH_VARIANTS.items(): torch_fixture(variant, kwargs, rng)
    marian_fixture(rng)
  if "vit" in groups:
    for i, (variant, spec) in enumerate(VIT_VARIANTS.items()): vit_fixture(variant, spec, np.random.default_rng([2026, i]))
  if "digits" in groups: digits_fixture()
  if "decoding" in groups: decoding_fixture()
  total = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(HERE) for f in files)
  print(f"wrote {HERE} ({total / 1024:.0f} KiB) with {', '.join(f'{k} {v}' for k, v in VERSIONS.items())}")


if __name__ == "__main__":
  main(sys.argv[1:])
