"""Import Marian checkpoints in the Hugging Face layout (the opus-mt models): config.json + model.safetensors.

A Marian model in tfm's terms: post-norm layers with no final stack norm; embeddings scaled by sqrt(d_model)
(scale_embedding); a sinusoidal table with all sines before all cosines, frequencies 10000^(-2i/d) (tfm's
"half_split"; computed, not stored); the shared embedding tied to the output layer; an output bias
(`final_logits_bias`, stored as (1, V)); the configured activation (opus-mt uses swish); decoding starts from the pad
token. Its attention scales q.k by head_dim^-0.5 and its LayerNorms use eps 1e-5, as tfm's do.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from tfm.io import stored

from tfm.io import weights
from tfm.config import TransformerConfig
from tfm.errors import ConfigError, WeightsError
from tfm.interop.mapping import HF_ACTIVATIONS, Conversion, checkpoint_file
from tfm.nn.layers import sinusoid_table
from tfm.nn.transformer import Transformer

# MarianConfig's defaults for the fields read here, for config.json files that leave some out
DEFAULTS: dict[str, Any] = {
  "vocab_size": 58101, "decoder_vocab_size": None, "max_position_embeddings": 1024, "encoder_layers": 12,
  "encoder_ffn_dim": 4096, "encoder_attention_heads": 16, "decoder_layers": 12, "decoder_ffn_dim": 4096,
  "decoder_attention_heads": 16, "activation_function": "gelu", "d_model": 1024, "dropout": 0.1,
  "decoder_start_token_id": 58100, "scale_embedding": False, "pad_token_id": 58100, "eos_token_id": 0,
  "bos_token_id": None, "share_encoder_decoder_embeddings": True, "tie_word_embeddings": True,
}
POSITIONS = ("model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight")
POSITION_TOLERANCE = 1e-3  # a stored table may be float16
GENERATION_FIELDS = ("num_beams", "max_length", "max_new_tokens", "min_length", "min_new_tokens", "length_penalty",
                     "early_stopping", "num_return_sequences", "bad_words_ids", "suppress_tokens", "forced_eos_token_id",
                     "decoder_start_token_id")
SAVE_AS_SAFETENSORS = ("from transformers import MarianMTModel\n"
                       "    MarianMTModel.from_pretrained('{dir}').save_pretrained('{dir}', safe_serialization=True)")


def read_config(folder: str) -> dict[str, Any]:
  """config.json of a Marian checkpoint folder, as written (MarianConfig's defaults are DEFAULTS)."""
  path = os.path.join(folder, "config.json")
  if not os.path.isfile(path):
    raise WeightsError(f"{folder} has no config.json; give a Marian (opus-mt) checkpoint folder, as save_pretrained writes it")
  try:
    with open(path, encoding="utf-8") as f: hf = json.load(f)
  except json.JSONDecodeError as e:
    raise WeightsError(f"{path} is not valid JSON ({e}); download or save the checkpoint again") from None
  if not isinstance(hf, dict) or hf.get("model_type", "marian") != "marian":
    kind = hf.get("model_type") if isinstance(hf, dict) else type(hf).__name__
    raise WeightsError(f"{path} describes a {kind!r} model; tfm.from_pretrained reads Marian (opus-mt) and ViT checkpoints")
  return hf


def read_generation_config(folder: str, raw_config: dict[str, Any]) -> dict[str, Any]:
  """generation_config.json (beam size, max length, suppressed ids...), or the same fields of config.json in older
  folders that have no generation_config.json."""
  path = os.path.join(folder, "generation_config.json")
  if not os.path.isfile(path): return {k: raw_config[k] for k in GENERATION_FIELDS if k in raw_config}
  try:
    with open(path, encoding="utf-8") as f: generation = json.load(f)
  except json.JSONDecodeError as e:
    raise WeightsError(f"{path} is not valid JSON ({e}); download or save the checkpoint again") from None
  if not isinstance(generation, dict): raise WeightsError(f"{path} must hold a JSON object")
  return generation


def marian_config(hf: dict[str, Any], output_bias: bool) -> TransformerConfig:
  """A Marian config.json (with defaults) -> the TransformerConfig that computes the same function."""
  for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
    if hf[a] != hf[b]: raise WeightsError(f"config.json has {a}={hf[a]} but {b}={hf[b]}; tfm's encoder and decoder share one size")
  if hf["decoder_vocab_size"] not in (None, hf["vocab_size"]):
    raise WeightsError(f"config.json has decoder_vocab_size={hf['decoder_vocab_size']} != vocab_size={hf['vocab_size']}; "
                       f"tfm models have one vocabulary")
  if hf["activation_function"] not in HF_ACTIVATIONS:
    raise WeightsError(f"config.json has activation_function={hf['activation_function']!r}; tfm computes "
                       f"{', '.join(HF_ACTIVATIONS)} (gelu as the exact erf form)")
  if not isinstance(hf["eos_token_id"], int):
    raise WeightsError(f"config.json has eos_token_id={hf['eos_token_id']!r}; tfm needs one eos id")
  start = hf["decoder_start_token_id"]
  try:
    return TransformerConfig(
      vocab_size=hf["vocab_size"], d_model=hf["d_model"], n_heads=hf["encoder_attention_heads"], d_ff=hf["encoder_ffn_dim"],
      n_encoder_layers=hf["encoder_layers"], n_decoder_layers=hf["decoder_layers"], dropout=float(hf["dropout"]),
      max_len=hf["max_position_embeddings"], norm_first=False, activation=HF_ACTIVATIONS[hf["activation_function"]],
      layer_norm_eps=1e-5, scale_embedding=bool(hf["scale_embedding"]),
      tie_embeddings=bool(hf["share_encoder_decoder_embeddings"] and hf["tie_word_embeddings"]),
      positional="half_split", final_norm=False, output_bias=output_bias, pad_id=hf["pad_token_id"],
      bos_id=start if hf["bos_token_id"] is None else hf["bos_token_id"], eos_id=hf["eos_token_id"], decoder_start_id=start)
  except ConfigError as e:
    raise WeightsError(f"config.json does not describe a model tfm can build: {e}") from None


def _layer_shapes(hf: dict[str, Any]) -> dict[str, tuple[int, ...]]:
  """Every per-layer tensor of a Marian checkpoint with its shape, under Marian's names."""
  d, ff = hf["d_model"], hf["encoder_ffn_dim"]
  attn = {f"{p}.{w}": shape for p in ("q_proj", "k_proj", "v_proj", "out_proj") for w, shape in (("weight", (d, d)), ("bias", (d,)))}
  common = {**{f"self_attn.{k}": s for k, s in attn.items()}, "self_attn_layer_norm.weight": (d,), "self_attn_layer_norm.bias": (d,),
            "fc1.weight": (ff, d), "fc1.bias": (ff,), "fc2.weight": (d, ff), "fc2.bias": (d,),
            "final_layer_norm.weight": (d,), "final_layer_norm.bias": (d,)}
  cross = {**{f"encoder_attn.{k}": s for k, s in attn.items()}, "encoder_attn_layer_norm.weight": (d,), "encoder_attn_layer_norm.bias": (d,)}
  out = {f"model.encoder.layers.{i}.{k}": s for i in range(hf["encoder_layers"]) for k, s in common.items()}
  return {**out, **{f"model.decoder.layers.{i}.{k}": s for i in range(hf["decoder_layers"]) for k, s in {**common, **cross}.items()}}


def _tfm_name(marian_name: str) -> str:
  """model.encoder.layers.0.fc1.weight -> encoder.layers.0.ffn.fc1.weight; other layer names are already tfm's."""
  name = marian_name.removeprefix("model.")
  return name.replace(".fc1.", ".ffn.fc1.").replace(".fc2.", ".ffn.fc2.")


def _tied(arrays: dict[str, np.ndarray], names: list[str], where: str) -> tuple[np.ndarray, list[str]]:
  """The one matrix that the stored names among `names` hold (config.json ties them): each must equal the first."""
  present = [n for n in names if n in arrays]
  if not present: raise WeightsError(f"{where}: none of {', '.join(names)} is in the file; the checkpoint has no embeddings")
  first = arrays[present[0]]
  for name in present[1:]:
    if arrays[name].shape != first.shape or not np.array_equal(arrays[name], first):
      raise WeightsError(f"{where}: {name} differs from {present[0]}, but config.json ties them (share_encoder_decoder_"
                         f"embeddings, tie_word_embeddings); the file and its config.json do not belong together")
  return first, present


def convert_marian(folder: str | os.PathLike) -> Conversion:
  """A Marian checkpoint folder -> a tfm Transformer's arrays and config, every name and shape checked."""
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise WeightsError(f"{folder} is not a directory; give a Marian checkpoint folder (config.json + model.safetensors)")
  raw = read_config(folder)
  hf = {**DEFAULTS, **raw}
  path = checkpoint_file(folder, SAVE_AS_SAFETENSORS)
  arrays = dict(stored.read_arrays(path, "Marian checkpoint")[1])   # read once; mapped tensors are taken out of it
  conv = Conversion(marian_config(hf, output_bias="final_logits_bias" in arrays), "transformer", {},
                    generation_config=read_generation_config(folder, raw))
  config = conv.config

  # the embedding matrices: one tie group per role, as config.json declares the sharing
  share, tie_out = bool(hf["share_encoder_decoder_embeddings"]), bool(hf["tie_word_embeddings"])
  enc, dec, out = "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"
  decoder_group = (["model.shared.weight", enc, dec] if share else [dec]) + ([out] if tie_out else [])
  groups = {"src_embed.weight": decoder_group if share else [enc], "tgt_embed.weight": decoder_group,
            "generator.weight": decoder_group if tie_out else [out]}
  embed_names: set[str] = set()
  for role in (("src_embed.weight",) if config.tie_embeddings else ("src_embed.weight", "tgt_embed.weight", "generator.weight")):
    matrix, present = _tied(arrays, groups[role], path)
    if matrix.shape != (config.vocab_size, config.d_model):
      raise WeightsError(f"{path}: {present[0]} has shape {matrix.shape}, config.json says ({config.vocab_size}, {config.d_model})")
    conv.arrays[role] = matrix
    conv.mapped += [(name, role + (" (tied: tgt_embed, generator)" if config.tie_embeddings else "")) for name in present]
    embed_names.update(present)
  for name in embed_names: del arrays[name]

  if "final_logits_bias" in arrays:
    bias = arrays.pop("final_logits_bias")
    if bias.shape != (1, config.vocab_size):
      raise WeightsError(f"{path}: final_logits_bias has shape {bias.shape}, config.json says (1, {config.vocab_size})")
    conv.arrays["generator.bias"] = bias.reshape(config.vocab_size)
    conv.mapped.append(("final_logits_bias", "generator.bias (reshaped to (V,))"))
  else:
    conv.notes.append("no final_logits_bias in the file: the output layer has no bias (a zero bias)")

  table = sinusoid_table(config.max_len, config.d_model, "half_split")
  for name in POSITIONS:
    if name not in arrays: continue
    found = arrays.pop(name)
    if found.shape != table.shape or np.abs(found - table).max() > POSITION_TOLERANCE:
      diff = f"max difference {np.abs(found - table).max():.3g}" if found.shape == table.shape else f"shape {found.shape}"
      raise WeightsError(f"{path}: {name} is not Marian's sinusoidal table ({diff} from the half-split table "
                         f"of shape {table.shape}); tfm cannot import learned or other positions")
    conv.notes.append(f"{name} checked equal to tfm's half-split sinusoid table (computed, not loaded)")
  conv.notes.append("positions: half-split sinusoids, computed; post-norm, no final stack norm; "
                    f"activation {config.activation}; scale_embedding={config.scale_embedding}; decoder starts from id {config.start_id}")

  stored.check_arrays(arrays, _layer_shapes(hf), path)
  for name, value in arrays.items():
    conv.arrays[_tfm_name(name)] = value
    conv.mapped.append((name, _tfm_name(name)))
  return conv


def from_pretrained(folder: str | os.PathLike, device: Any = None, dtype: Any = None, parallel: str | None = None) -> Transformer:
  """A tfm Transformer with a Marian checkpoint's weights (the opus-mt layout: config.json + model.safetensors).

  Every tensor of the file is mapped by name and shape; a name tfm does not know is an error, never skipped.
  dtype: the model's compute dtype (float32 when None), device and parallel as in tfm.load.
  """
  weights.model_dtype(dtype)   # a bad dtype is refused before the folder is read
  conv = convert_marian(folder)
  model = weights.build(conv.config, conv.arrays, os.fspath(folder), device, dtype, parallel)
  model.generation_config = conv.generation_config  # the checkpoint's decoding defaults, which tfm.generate reads
  return model
