"""Write the checkpoint-family fixtures under tests/fixtures/: a tiny random model of each encoder-decoder family that
tfm imports (M2M100/NLLB, BART, mBART, Pegasus, T5 v1.0 and v1.1; Whisper's model with `... make_family_fixtures.py
whisper`), saved as transformers' save_pretrained writes it, with the logits and the generate() results transformers
computed for it, so the tests check tfm without transformers.

    .venv/bin/pip install -e ".[hf]" protobuf   # torch==2.13.0, transformers (and protobuf for the tokenizers)
    .venv/bin/python tests/make_family_fixtures.py          # or name families: ... make_family_fixtures.py bart

Made with torch 2.13.0+cpu and transformers 5.25.0 (each fixture records the versions). Every weight, bias, LayerNorm
gain and bias, learned position, final_logits_bias and the pad embedding row is random, so an importer that drops,
misplaces or mis-scales any of them fails. Sizes: d_model 32, 4 heads, FFN 64, 2 + 2 layers, 64 positions, the
vocabulary of the family's tokenizer (tests/make_tokenizer_fixtures.py's tokenizer_files: M2M100's model with NLLB-200's
tokenizer, as NLLB checkpoints are; T5's for both T5 versions), whose files are in the folder, so that each folder is
a whole checkpoint that `tfm translate --model` runs; the source batch has a padded row.

tests/fixtures/
  <family>_tiny/        config.json, generation_config.json, model.safetensors and the tokenizer's files
  <family>_tiny.npz     src (2, 7) and tgt (2, 5) ids, the encoder output (pad positions zeroed: transformers gives M2M100's
                        pad tokens another position), the logits
  <family>_tiny.json    generate(): greedy and 4-beam ids (start token dropped) and beam scores, with the settings used
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as fixtures  # noqa: E402  (beside this script)
from make_tokenizer_fixtures import tokenizer_files  # noqa: E402
from transformers import (BartConfig, BartForConditionalGeneration, M2M100Config, M2M100ForConditionalGeneration, MBartConfig,
                          MBartForConditionalGeneration, PegasusConfig, PegasusForConditionalGeneration, T5Config,
                          T5ForConditionalGeneration, WhisperConfig, WhisperForConditionalGeneration)

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
VERSIONS = {"torch": torch.__version__, "transformers": transformers.__version__}
SIZES = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
             encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, attn_implementation="eager")
# per family: the model class, its config, and the generation settings of its checkpoints (what generate() reads)
FAMILIES = {
  # NLLB-200 and M2M100: the target language is forced as the first token (language codes are read from the tokenizer)
  "m2m100": (M2M100ForConditionalGeneration, (M2M100Config, dict(**SIZES, activation_function="relu", scale_embedding=True,
                                                          pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)),
             dict(forced_bos_token_id="fra_Latn")),
  "bart": (BartForConditionalGeneration, (BartConfig, dict(**SIZES, activation_function="gelu", pad_token_id=1, bos_token_id=0,
                                                    eos_token_id=2, decoder_start_token_id=2)), dict(forced_bos_token_id=0, forced_eos_token_id=2)),
  # mBART (cc25 style) starts the decoder from the target language code
  "mbart": (MBartForConditionalGeneration, (MBartConfig, dict(**SIZES, activation_function="gelu", scale_embedding=True, pad_token_id=1,
                                                       bos_token_id=0, eos_token_id=2, decoder_start_token_id="ro_RO")),
            dict(forced_eos_token_id=2)),
  "pegasus": (PegasusForConditionalGeneration, (PegasusConfig, dict(**SIZES, activation_function="relu", scale_embedding=True,
                                                             pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)), dict(forced_eos_token_id=1)),
}
# T5: v1.0 (relu, output tied and scaled) and v1.1 / Flan-T5 (gated-gelu, heads of 6 features: 4 x 6 != d_model, untied
# output layer); 8 buckets up to distance 20, so that distances past the exact buckets are bucketed logarithmically
T5_SIZES = dict(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
                relative_attention_max_distance=20, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, attn_implementation="eager")
FAMILIES.update({
  "t5": (T5ForConditionalGeneration, (T5Config, dict(**T5_SIZES, d_kv=8, feed_forward_proj="relu")), {}),
  "flan_t5": (T5ForConditionalGeneration, (T5Config, dict(**T5_SIZES, d_kv=6, feed_forward_proj="gated-gelu", tie_word_embeddings=False)), {}),
})
TOKENIZERS = {"m2m100": "nllb", "bart": "bart", "mbart": "mbart", "pegasus": "pegasus", "t5": "t5", "flan_t5": "t5"}
MAX_LENGTH = 16   # transformers' max_length, the start token included: tfm's max_len 15


def perturb(model: torch.nn.Module, rng: np.random.Generator) -> None:
  """Random values everywhere, in place: matrices N(0, 0.2), biases N(0, 0.3), LayerNorm gains 1 + N(0, 0.2), learned
  positions and final_logits_bias N(0, 0.2); sinusoid tables (not weights) stay."""
  named = {**dict(model.named_parameters()), **({"final_logits_bias": model.final_logits_bias} if hasattr(model, "final_logits_bias") else {})}
  fixtures.perturb(named, rng, fixed=lambda name, p: not p.requires_grad and "final_logits_bias" not in name)   # sinusoids are frozen


def untied_t5(model: T5ForConditionalGeneration, folder: str, rng: np.random.Generator) -> None:
  """A T5 v1.1 checkpoint as the published ones are: an output layer of its own (transformers 5.25 ties it to the
  embedding when it builds one), config.json with tie_word_embeddings false and no scale_decoder_outputs."""
  head = torch.nn.Linear(model.config.d_model, model.config.vocab_size, bias=False)
  with torch.no_grad(): head.weight.copy_(torch.from_numpy(0.2 * rng.standard_normal(tuple(head.weight.shape))))
  model.lm_head = head
  state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("embed_tokens.weight")}
  save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
  config = {k: v for k, v in model.config.to_dict().items() if k != "scale_decoder_outputs"}
  with open(os.path.join(folder, "config.json"), "w") as f: json.dump({**config, "tie_word_embeddings": False}, f, indent=1)
  model.generation_config.save_pretrained(folder)


def family_fixture(family: str, rng: np.random.Generator) -> None:
  cls, (config_class, kwargs), generation = FAMILIES[family]
  folder = os.path.join(HERE, f"{family}_tiny")
  shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(folder)
  vocab_size = tokenizer_files(TOKENIZERS[family], folder)["vocab_size"]
  tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
  def ids(settings: dict) -> dict:   # token fields given as a language code -> its id in this tokenizer
    return {k: tokenizer.convert_tokens_to_ids(v) if k.endswith("token_id") and isinstance(v, str) else v for k, v in settings.items()}
  config, generation = config_class(**ids(kwargs), vocab_size=vocab_size), ids(generation)
  torch.manual_seed(0)
  model = cls(config).eval()
  perturb(model, rng)
  model.generation_config = transformers.GenerationConfig(**{**model.generation_config.to_diff_dict(), **generation})
  if family == "flan_t5": untied_t5(model, folder, rng)   # into the folder tokenizer_files made
  else: model.save_pretrained(folder)
  assert family != "flan_t5" or not torch.equal(model.lm_head.weight, model.shared.weight)
  pad, start = config.pad_token_id, config.decoder_start_token_id
  words = np.arange(3, 60)
  src = np.stack([rng.choice(words, 7), rng.choice(words, 7)]).astype(np.int64)
  src[0, 4], src[0, 5:], src[1, 6] = config.eos_token_id, pad, config.eos_token_id
  tgt = np.concatenate([np.full((2, 1), start), np.stack([rng.choice(words, 4), rng.choice(words, 4)])], 1).astype(np.int64)
  s, t, mask = torch.from_numpy(src), torch.from_numpy(tgt), torch.from_numpy(src != pad)
  with torch.no_grad():
    memory = model.get_encoder()(input_ids=s, attention_mask=mask).last_hidden_state * mask[..., None]
    logits = model(input_ids=s, attention_mask=mask, decoder_input_ids=t).logits
  np.savez_compressed(os.path.join(HERE, f"{family}_tiny.npz"), src=src, tgt=tgt, memory=memory.numpy(), logits=logits.numpy(),
                      versions=json.dumps(VERSIONS))
  cases = []
  first = None   # the greedy decode's first token, which the last two cases forbid at the start (begin_suppress_tokens)
  for settings in (dict(num_beams=1), dict(num_beams=4), dict(num_beams=4, length_penalty=0.6, num_return_sequences=2),
                   dict(num_beams=1, begin_suppress_tokens="first"), dict(num_beams=4, begin_suppress_tokens="first")):
    if settings.get("begin_suppress_tokens") == "first": settings = {**settings, "begin_suppress_tokens": [first]}
    with torch.no_grad():
      out = model.generate(s, attention_mask=mask, max_length=MAX_LENGTH, output_scores=True, return_dict_in_generate=True,
                           **settings)
    case = {"settings": settings, "ids": out.sequences[:, 1:].tolist()}
    first = case["ids"][0][0] if first is None else first
    if settings["num_beams"] > 1: case["scores"] = out.sequences_scores.tolist()
    cases.append(case)
  translations = translated(model, tokenizer, family)
  with open(os.path.join(HERE, f"{family}_tiny.json"), "w", encoding="utf-8") as f:
    json.dump({"src": src.tolist(), "max_len": MAX_LENGTH - 1, "generation": generation, "cases": cases, "translations": translations,
               "versions": VERSIONS}, f, indent=1)


TEXTS = ["the cat sat on the mat", "we read books in the garden at night", "Hello, world!"]
LANGUAGES = {"m2m100": ("eng_Latn", "deu_Latn"), "mbart": ("en_XX", "ro_RO")}   # the multilingual fixtures' directions


def translated(model, tokenizer, family: str) -> dict:
  """Texts through transformers' tokenizer, greedy generate and batch_decode, as a user translates with the folder:
  the source language set on the tokenizer, the target forced first (NLLB) or started from (mBART cc25)."""
  source, target = LANGUAGES.get(family, (None, None))
  extra = {}
  if source is not None:
    tokenizer.src_lang = source
    extra = {"forced_bos_token_id" if family == "m2m100" else "decoder_start_token_id": tokenizer.convert_tokens_to_ids(target)}
  batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
  with torch.no_grad(): out = model.generate(**batch, max_length=MAX_LENGTH, num_beams=1, **extra)
  return {"texts": TEXTS, "source_lang": source, "target_lang": target, "ids": batch["input_ids"].tolist(),
          "expected": tokenizer.batch_decode(out, skip_special_tokens=True)}


def whisper_fixture(rng: np.random.Generator) -> None:
  """whisper_tiny/ and whisper_tiny.npz: a tiny Whisper (8 mel bins, 32 frames -> 16 encoder positions, 24 decoder
  positions, vocabulary 64, no tokenizer) with every weight perturbed but the encoder's sinusoid table (a checkpoint's
  own, not trained), random log-mel features, and transformers' encoder output and logits."""
  folder = os.path.join(HERE, "whisper_tiny")
  shutil.rmtree(folder, ignore_errors=True)
  config = WhisperConfig(vocab_size=64, num_mel_bins=8, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                         decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=16,
                         max_target_positions=24, pad_token_id=3, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
                         attn_implementation="eager")
  torch.manual_seed(0)
  model = WhisperForConditionalGeneration(config).eval()
  perturb(model, rng)
  model.generation_config.begin_suppress_tokens = [2, 51]   # eos and the first token greedy decoding picks without them
  model.save_pretrained(folder)
  features = rng.standard_normal((2, 8, 32)).astype(np.float32)
  tgt = np.concatenate([np.ones((2, 1)), rng.integers(4, 60, (2, 4))], 1).astype(np.int64)
  with torch.no_grad():
    memory = model.get_encoder()(input_features=torch.from_numpy(features)).last_hidden_state
    logits = model(input_features=torch.from_numpy(features), decoder_input_ids=torch.from_numpy(tgt)).logits
  np.savez_compressed(os.path.join(HERE, "whisper_tiny.npz"), src=features, tgt=tgt, memory=memory.numpy(), logits=logits.numpy(),
                      versions=json.dumps(VERSIONS))


def main(families: list[str]) -> None:
  """Write the fixtures of the given families (all when none is named); each draws from its own seeded generator."""
  if families == ["whisper"]: return whisper_fixture(np.random.default_rng([2027, 99]))
  unknown = sorted(set(families) - set(FAMILIES))
  if unknown: raise SystemExit(f"unknown famil(ies) {', '.join(unknown)}; choose among {', '.join(FAMILIES)}")
  for i, family in enumerate(FAMILIES):
    if not families or family in families: family_fixture(family, np.random.default_rng([2027, i]))
  print(f"wrote {', '.join(families or FAMILIES)} under {HERE} with {', '.join(f'{k} {v}' for k, v in VERSIONS.items())}")


if __name__ == "__main__":
  main(sys.argv[1:])
