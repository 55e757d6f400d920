"""Import the encoder-decoder checkpoints that transformers writes for Marian (opus-mt), BART, mBART, Pegasus, M2M100
(NLLB-200 too, which is an M2M100ForConditionalGeneration) and Whisper: config.json + model.safetensors.

Each is the paper's Transformer with a few documented differences, and each difference is a field of tfm's
TransformerConfig, not a second model (FAMILIES):

  family    norm                       positions                                        embeddings
  marian    post-norm, no final norm   half-split sinusoids (computed)                  x sqrt(d) if scale_embedding
  pegasus   pre-norm, final norms      half-split sinusoids (computed)                  x sqrt(d) if scale_embedding
  m2m_100   pre-norm, final norms      sinusoids over d/2 - 1 steps from row pad + 1    x sqrt(d) if scale_embedding
  bart      post-norm, no final norm   learned, from row 2; LayerNorm after embedding   x sqrt(d) if scale_embedding
  mbart     pre-norm, final norms      learned, from row 2; LayerNorm after embedding   x sqrt(d) if scale_embedding
  whisper   pre-norm, final norms      learned (the encoder's a stored sinusoid table)  decoder only: the encoder reads
                                                                                        log-mel features (tfm.nn.audio)

All tie the output layer to the shared embedding (tie_word_embeddings), add `final_logits_bias` where the file has
one, scale q.k by head_dim^-0.5 (Whisper's keys have no bias: zero ones), use LayerNorm eps 1e-5 and the configured
activation (gelu as the exact erf form).
M2M100 numbers positions from pad_token_id + 1 on as long as no pad precedes a token: tfm pads batches on the right.
Every tensor of the file is mapped by name and shape; a name tfm does not know is an error, never skipped.
"""
from __future__ import annotations

import os
from collections import ChainMap
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfm.files import read_json
from tfm.config import TransformerConfig
from tfm.errors import ConfigError, WeightsError
from tfm.interop.mapping import HF_ACTIVATIONS, Conversion, checkpoint_file
from tfm.io import stored
from tfm.nn.layers import sinusoid_table

# what transformers' BartConfig assumes for the fields read here, which config.json files may leave out
BART_DEFAULTS: dict[str, Any] = {
  "vocab_size": 50265, "max_position_embeddings": 1024, "encoder_layers": 12, "encoder_ffn_dim": 4096,
  "encoder_attention_heads": 16, "decoder_layers": 12, "decoder_ffn_dim": 4096, "decoder_attention_heads": 16,
  "activation_function": "gelu", "d_model": 1024, "dropout": 0.1, "scale_embedding": False, "pad_token_id": 1,
  "bos_token_id": 0, "eos_token_id": 2, "decoder_start_token_id": 2, "tie_word_embeddings": True,
  "decoder_vocab_size": None, "share_encoder_decoder_embeddings": True,
}


@dataclass(frozen=True)
class Family:
  """One checkpoint family: its model class, its config class's defaults, and the TransformerConfig switches that make
  tfm's Transformer compute its function."""
  model_class: str
  defaults: dict[str, Any]
  norm_first: bool
  positional: str
  embed_norm: bool = False
  audio: bool = False               # Whisper: a log-mel spectrogram through two convolutions feeds the encoder
  output_name: str = "lm_head.weight"

  def position_offset(self, hf: dict[str, Any]) -> int:
    """The table row of position 0: learned tables start at row 2 (Whisper's at 0), M2M100's sinusoids at pad + 1."""
    if self.audio: return 0
    return {"learned": 2, "m2m100": hf["pad_token_id"] + 1}.get(self.positional, 0)


FAMILIES: dict[str, Family] = {
  "marian": Family("MarianMTModel", {**BART_DEFAULTS, "vocab_size": 58101, "decoder_start_token_id": 58100, "pad_token_id": 58100,
                                     "eos_token_id": 0, "bos_token_id": None}, norm_first=False, positional="half_split"),
  "pegasus": Family("PegasusForConditionalGeneration", {**BART_DEFAULTS, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": None,
                                                        "decoder_start_token_id": 0}, norm_first=True, positional="half_split"),
  "m2m_100": Family("M2M100ForConditionalGeneration", {**BART_DEFAULTS, "vocab_size": 128112, "activation_function": "relu",
                                                       "scale_embedding": True}, norm_first=True, positional="m2m100"),
  "bart": Family("BartForConditionalGeneration", BART_DEFAULTS, norm_first=False, positional="learned", embed_norm=True),
  "mbart": Family("MBartForConditionalGeneration", {**BART_DEFAULTS, "decoder_start_token_id": None}, norm_first=True,
                  positional="learned", embed_norm=True),
  "whisper": Family("WhisperForConditionalGeneration", {
    **BART_DEFAULTS, "vocab_size": 51865, "num_mel_bins": 80, "encoder_layers": 4, "decoder_layers": 4, "encoder_attention_heads": 6,
    "decoder_attention_heads": 6, "encoder_ffn_dim": 1536, "decoder_ffn_dim": 1536, "d_model": 384, "dropout": 0.0,
    "max_source_positions": 1500, "max_target_positions": 448, "pad_token_id": 50256, "bos_token_id": 50256, "eos_token_id": 50256,
    "decoder_start_token_id": 50257}, norm_first=True, positional="learned", audio=True, output_name="proj_out.weight"),
}
POSITION_TOLERANCE = 1e-3  # a stored sinusoid table may be float16
GENERATION_FIELDS = ("num_beams", "max_length", "max_new_tokens", "min_length", "min_new_tokens", "length_penalty",
                     "early_stopping", "num_return_sequences", "bad_words_ids", "suppress_tokens", "forced_eos_token_id",
                     "forced_bos_token_id", "decoder_start_token_id")
SAVE_AS_SAFETENSORS = ("from transformers import AutoModelForSeq2SeqLM\n"
                       "    AutoModelForSeq2SeqLM.from_pretrained('{dir}').save_pretrained('{dir}', safe_serialization=True)")


def read_config(folder: str) -> tuple[Family, dict[str, Any]]:
  """The family of a checkpoint folder (config.json's model_type) and its config.json as written."""
  path = os.path.join(folder, "config.json")
  if not os.path.isfile(path):
    raise WeightsError(f"{folder} has no config.json; give a checkpoint folder as transformers' save_pretrained writes it")
  hf = read_json(path)
  kind = hf.get("model_type", "marian") if isinstance(hf, dict) else type(hf).__name__
  if kind not in FAMILIES:
    raise WeightsError(f"{path} describes a {kind!r} model; tfm.from_pretrained reads {', '.join(FAMILIES)}, t5, mt5 "
                       f"(encoder-decoder) and vit checkpoints")
  return FAMILIES[kind], hf


def read_generation_config(folder: str, raw_config: dict[str, Any]) -> dict[str, Any]:
  """generation_config.json (beam size, max length, forced tokens...), or the same fields of config.json in older
  folders that have no generation_config.json."""
  path = os.path.join(folder, "generation_config.json")
  if not os.path.isfile(path): return {k: raw_config[k] for k in GENERATION_FIELDS if k in raw_config}
  generation = read_json(path)
  if not isinstance(generation, dict): raise WeightsError(f"{path} must hold a JSON object")
  return generation


def transformer_config(family: Family, hf: dict[str, Any], output_bias: bool) -> TransformerConfig:
  """A config.json (with its family's defaults) -> the TransformerConfig that computes the same function."""
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
  bos = hf["bos_token_id"]
  start = hf["decoder_start_token_id"] if hf["decoder_start_token_id"] is not None else bos
  if start is None: raise WeightsError("config.json has neither decoder_start_token_id nor bos_token_id: tfm needs the decoder's first token")
  try:
    return TransformerConfig(
      vocab_size=hf["vocab_size"], d_model=hf["d_model"], n_heads=hf["encoder_attention_heads"], d_ff=hf["encoder_ffn_dim"],
      n_encoder_layers=hf["encoder_layers"], n_decoder_layers=hf["decoder_layers"], dropout=float(hf["dropout"]),
      max_len=hf["max_target_positions" if family.audio else "max_position_embeddings"], norm_first=family.norm_first,
      activation=HF_ACTIVATIONS[hf["activation_function"]],
      layer_norm_eps=1e-5, scale_embedding=bool(hf["scale_embedding"]),
      tie_embeddings=bool(hf["share_encoder_decoder_embeddings"] and hf["tie_word_embeddings"]),
      positional=family.positional, position_offset=family.position_offset(hf), embed_norm=family.embed_norm,
      final_norm=family.norm_first, output_bias=output_bias, pad_id=hf["pad_token_id"],
      n_mels=hf["num_mel_bins"] if family.audio else 0, max_source_len=hf["max_source_positions"] if family.audio else None,
      bos_id=start if bos is None else bos, eos_id=hf["eos_token_id"], decoder_start_id=start)
  except ConfigError as e:
    raise WeightsError(f"config.json does not describe a model tfm can build: {e}") from None


def _layer_shapes(family: Family, hf: dict[str, Any]) -> dict[str, tuple[int, ...]]:
  """Every tensor of a checkpoint but the embeddings, the output bias and sinusoid tables, with its shape, under the
  file's names."""
  d, ff = hf["d_model"], hf["encoder_ffn_dim"]
  attn = {f"{p}.{w}": shape for p in ("q_proj", "k_proj", "v_proj", "out_proj") for w, shape in (("weight", (d, d)), ("bias", (d,)))
          if not (family.audio and p == "k_proj" and w == "bias")}   # Whisper's keys have no bias
  norm = {"weight": (d,), "bias": (d,)}
  common = {**{f"self_attn.{k}": s for k, s in attn.items()}, **{f"self_attn_layer_norm.{k}": s for k, s in norm.items()},
            "fc1.weight": (ff, d), "fc1.bias": (ff,), "fc2.weight": (d, ff), "fc2.bias": (d,),
            **{f"final_layer_norm.{k}": s for k, s in norm.items()}}
  cross = {**{f"encoder_attn.{k}": s for k, s in attn.items()}, **{f"encoder_attn_layer_norm.{k}": s for k, s in norm.items()}}
  out = {f"model.encoder.layers.{i}.{k}": s for i in range(hf["encoder_layers"]) for k, s in common.items()}
  out.update({f"model.decoder.layers.{i}.{k}": s for i in range(hf["decoder_layers"]) for k, s in {**common, **cross}.items()})
  for stack in ("encoder", "decoder"):
    if family.norm_first: out.update({f"model.{stack}.layer_norm.{k}": s for k, s in norm.items()})
    if family.embed_norm: out.update({f"model.{stack}.layernorm_embedding.{k}": s for k, s in norm.items()})
    if family.positional == "learned" and not family.audio: out[f"model.{stack}.embed_positions.weight"] = (hf["max_position_embeddings"] + 2, d)
  if family.audio:
    out.update({"model.encoder.embed_positions.weight": (hf["max_source_positions"], d), "model.decoder.embed_positions.weight":
                (hf["max_target_positions"], d), "model.encoder.conv1.weight": (d, hf["num_mel_bins"], 3), "model.encoder.conv1.bias": (d,),
                "model.encoder.conv2.weight": (d, d, 3), "model.encoder.conv2.bias": (d,)})
  return out


STACK_NAMES = {"model.encoder.conv1.": "audio.conv1.", "model.encoder.conv2.": "audio.conv2.",
               "model.encoder.layernorm_embedding.": "src_embed_norm.", "model.decoder.layernorm_embedding.": "tgt_embed_norm.",
               "model.encoder.embed_positions.": "src_positions.", "model.decoder.embed_positions.": "tgt_positions."}


def _tfm_name(name: str) -> str:
  """model.encoder.layers.0.fc1.weight -> encoder.layers.0.ffn.fc1.weight, model.encoder.layernorm_embedding.weight ->
  src_embed_norm.weight, model.decoder.embed_positions.weight -> tgt_positions.weight; the rest are already tfm's."""
  for theirs, ours in STACK_NAMES.items():
    if name.startswith(theirs): return ours + name.removeprefix(theirs)
  return name.removeprefix("model.").replace(".fc1.", ".ffn.fc1.").replace(".fc2.", ".ffn.fc2.")


def tied(arrays: stored.Pending, names: list[str], where: str, shape: tuple[int, int]) -> list[str]:
  """The stored names among `names`, which config.json ties into one matrix of `shape`: each must equal the first (read
  only where the file stores more than one; the matrix itself is read when the model takes it)."""
  present = [n for n in names if n in arrays]
  if not present: raise WeightsError(f"{where}: none of {', '.join(names)} is in the file; the checkpoint has no embeddings")
  if arrays.shape(present[0]) != shape:
    raise WeightsError(f"{where}: {present[0]} has shape {arrays.shape(present[0])}, config.json says {shape}")
  first = arrays[present[0]] if len(present) > 1 else None
  for name in present[1:]:
    if arrays[name].shape != first.shape or not np.array_equal(arrays[name], first):
      raise WeightsError(f"{where}: {name} differs from {present[0]}, but config.json ties them (share_encoder_decoder_"
                         f"embeddings, tie_word_embeddings); the file and its config.json do not belong together")
  return present


def _embeddings(conv: Conversion, arrays: stored.Pending, hf: dict[str, Any], path: str, out: str) -> dict[str, str]:
  """The embedding matrices: one tie group per role, as config.json declares the sharing; taken out of `arrays`, and
  returned as role -> the file's name to read it from."""
  config = conv.config
  share, tie_out = bool(hf["share_encoder_decoder_embeddings"]), bool(hf["tie_word_embeddings"])
  enc, dec = "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"
  decoder_group = (["model.shared.weight", enc, dec] if share else [dec]) + ([out] if tie_out else [])
  groups = {"src_embed.weight": decoder_group if share else [enc], "tgt_embed.weight": decoder_group,
            "generator.weight": decoder_group if tie_out else [out]}
  embed_names: set[str] = set()
  roles = {}
  for role in (("src_embed.weight",) if config.tie_embeddings else ("src_embed.weight", "tgt_embed.weight", "generator.weight")):
    present = tied(arrays, groups[role], path, (config.vocab_size, config.d_model))
    roles[role] = present[0]
    conv.mapped += [(name, role + (" (tied: tgt_embed, generator)" if config.tie_embeddings else "")) for name in present]
    embed_names.update(present)
  for name in embed_names: del arrays[name]
  return roles


def _sinusoids_checked(conv: Conversion, arrays: stored.Pending, path: str) -> None:
  """A sinusoid table the file stores (Marian's and Pegasus' do) must be tfm's; it is computed, not loaded."""
  config = conv.config
  table = sinusoid_table(config.max_len + config.position_offset, config.d_model, config.positional)
  for name in ("model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight"):
    if name not in arrays: continue
    found = arrays.pop(name)
    if found.shape != table.shape or np.abs(found - table).max() > POSITION_TOLERANCE:
      diff = f"max difference {np.abs(found - table).max():.3g}" if found.shape == table.shape else f"shape {found.shape}"
      raise WeightsError(f"{path}: {name} is not the {config.positional} sinusoid table ({diff} from the table of shape "
                         f"{table.shape}); the file and its config.json do not belong together")
    conv.notes.append(f"{name} checked equal to tfm's {config.positional} sinusoid table (computed, not loaded)")


def convert(folder: str | os.PathLike) -> Conversion:
  """A checkpoint folder of one of FAMILIES -> a tfm Transformer's arrays and config, every name and shape checked."""
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise WeightsError(f"{folder} is not a directory; give a checkpoint folder (config.json + model.safetensors)")
  family, raw = read_config(folder)
  hf = {**family.defaults, **raw}
  path = checkpoint_file(folder, SAVE_AS_SAFETENSORS)
  arrays = stored.Pending(stored.read_arrays(path, f"{family.model_class} checkpoint")[1])   # mapped tensors are taken out of it
  conv = Conversion(transformer_config(family, hf, output_bias="final_logits_bias" in arrays), "transformer", {},
                    generation_config=read_generation_config(folder, raw))
  config = conv.config
  embeddings = _embeddings(conv, arrays, hf, path, family.output_name)
  if "final_logits_bias" in arrays:
    bias = arrays.pop("final_logits_bias")
    if bias.shape != (1, config.vocab_size):
      raise WeightsError(f"{path}: final_logits_bias has shape {bias.shape}, config.json says (1, {config.vocab_size})")
    conv.arrays["generator.bias"] = bias.reshape(config.vocab_size)
    conv.mapped.append(("final_logits_bias", "generator.bias (reshaped to (V,))"))
  else:
    conv.notes.append("no final_logits_bias in the file: the output layer has no bias (a zero bias)")
  if config.positional != "learned": _sinusoids_checked(conv, arrays, path)
  conv.notes.append(f"{raw.get('model_type', 'marian')}: {'pre' if config.norm_first else 'post'}-norm"
                    f"{', final stack norms' if config.use_final_norm else ''}; positions {config.positional} from row "
                    f"{config.position_offset}{'; LayerNorm after the embeddings' if config.embed_norm else ''}; activation "
                    f"{config.activation}; scale_embedding={config.scale_embedding}; decoder starts from id {config.start_id}")
  stored.check_arrays(arrays, _layer_shapes(family, hf), path, values=False)   # the loader checks the values as it takes them
  conv.mapped += [(name, _tfm_name(name)) for name in arrays]
  if family.audio:   # Whisper's keys have no bias: a zero one computes the same (and the softmax ignores it anyway)
    attentions = [(f"encoder.layers.{i}", "self_attn") for i in range(config.n_encoder_layers)]
    attentions += [(f"decoder.layers.{i}", a) for i in range(config.n_decoder_layers) for a in ("self_attn", "encoder_attn")]
    conv.arrays.update({f"{layer}.{a}.k_proj.bias": np.zeros(config.d_model, np.float32) for layer, a in attentions})
    conv.notes.append("whisper: the keys' projections have no bias: zero biases (the same function)")
  # the layers' tensors and the embeddings are read as the model takes them, one at a time
  conv.arrays = ChainMap(conv.arrays, arrays.renamed(_tfm_name), arrays.taken(embeddings))
  return conv

