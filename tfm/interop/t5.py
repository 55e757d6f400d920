"""Import T5 checkpoints as transformers writes them (T5ForConditionalGeneration, model_type "t5": T5 v1.0, v1.1,
Flan-T5; "mt5": mT5): config.json + model.safetensors.

T5 in tfm's terms (TransformerConfig's T5 switches): pre-norm layers and final stack norms, all RMS norms (no mean,
no bias, eps layer_norm_epsilon); no bias in any projection; q.k not scaled; no positions added to the embeddings
(not scaled either) but a relative position bias per head, looked up by bucketed distance from one table per stack
(block 0's relative_attention_bias, shared by the stack's layers); heads of d_kv features; the FFN as
feed_forward_proj says (relu; "gated-gelu" is gelu_tanh(wi_0 x) * wi_1 x); decoding starts from pad. v1.0 ties the
output layer to the shared embedding and scales the decoder's output by d_model^-0.5 first; v1.1 and Flan-T5 store
an untied lm_head (tie_word_embeddings false) and do not scale.
"""
from __future__ import annotations

import os
import re
from collections import ChainMap
from typing import Any

from tfm.config import TransformerConfig
from tfm.errors import ConfigError, WeightsError
from tfm.interop.mapping import Conversion, checkpoint_file
from tfm.files import read_json
from tfm.interop.seq2seq import SAVE_AS_SAFETENSORS, read_generation_config, tied
from tfm.io import stored

# what transformers' T5Config assumes for the fields read here
DEFAULTS: dict[str, Any] = {"vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6, "num_decoder_layers": None,
                            "num_heads": 8, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                            "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6, "feed_forward_proj": "relu", "pad_token_id": 0,
                            "eos_token_id": 1, "decoder_start_token_id": 0, "tie_word_embeddings": True, "n_positions": 512}
# feed_forward_proj's activation -> tfm's ("gated-gelu" is the tanh approximation, transformers' gelu_new)
FFN_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "silu": "swish", "swish": "swish"}
# transformers' names -> tfm's, for the tensors of the layers (N: a layer's number)
LAYER_NAMES = [
  (r"(encoder|decoder)\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkv])\.weight", r"\1.layers.\2.self_attn.\3_proj.weight"),
  (r"(encoder|decoder)\.block\.(\d+)\.layer\.0\.SelfAttention\.o\.weight", r"\1.layers.\2.self_attn.out_proj.weight"),
  (r"(encoder|decoder)\.block\.(\d+)\.layer\.0\.layer_norm\.weight", r"\1.layers.\2.self_attn_layer_norm.weight"),
  (r"decoder\.block\.(\d+)\.layer\.1\.EncDecAttention\.([qkv])\.weight", r"decoder.layers.\1.encoder_attn.\2_proj.weight"),
  (r"decoder\.block\.(\d+)\.layer\.1\.EncDecAttention\.o\.weight", r"decoder.layers.\1.encoder_attn.out_proj.weight"),
  (r"decoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight", r"decoder.layers.\1.encoder_attn_layer_norm.weight"),
  (r"(encoder\.block\.(\d+)\.layer\.1|decoder\.block\.(\d+)\.layer\.2)\.DenseReluDense\.(wi|wi_0)\.weight", "fc1"),
  (r"(encoder\.block\.(\d+)\.layer\.1|decoder\.block\.(\d+)\.layer\.2)\.DenseReluDense\.wi_1\.weight", "gate"),
  (r"(encoder\.block\.(\d+)\.layer\.1|decoder\.block\.(\d+)\.layer\.2)\.DenseReluDense\.wo\.weight", "fc2"),
  (r"(encoder\.block\.(\d+)\.layer\.1|decoder\.block\.(\d+)\.layer\.2)\.layer_norm\.weight", "final_layer_norm"),
  (r"encoder\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight", "src_relative_bias.weight"),
  (r"decoder\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight", "tgt_relative_bias.weight"),
  (r"(encoder|decoder)\.final_layer_norm\.weight", r"\1.layer_norm.weight"),
]


def tfm_name(name: str) -> str:
  """A T5 tensor name -> tfm's: encoder.block.3.layer.1.DenseReluDense.wi_0.weight -> encoder.layers.3.ffn.fc1.weight."""
  for pattern, ours in LAYER_NAMES:
    if (m := re.fullmatch(pattern, name)) is None: continue
    if ours in ("fc1", "gate", "fc2", "final_layer_norm"):   # the FFN sublayer: layer.1 in the encoder, layer.2 in the decoder
      stack, number = ("encoder", m.group(2)) if m.group(2) is not None else ("decoder", m.group(3))
      return f"{stack}.layers.{number}." + ("final_layer_norm.weight" if ours == "final_layer_norm" else f"ffn.{ours}.weight")
    return m.expand(ours)
  return name


def feed_forward(proj: str) -> tuple[bool, str]:
  """feed_forward_proj ("relu", "gated-gelu", ...) -> (gated, tfm's activation), or a WeightsError naming what is supported."""
  gated, _, name = proj.rpartition("-")
  name = "gelu_new" if proj == "gated-gelu" else name
  if gated not in ("", "gated") or name not in FFN_ACTIVATIONS:
    raise WeightsError(f"config.json has feed_forward_proj={proj!r}; tfm computes {', '.join(FFN_ACTIVATIONS)} and their "
                       f"gated forms ('gated-gelu', 'gated-relu', ...)")
  return gated == "gated", FFN_ACTIVATIONS[name]


def t5_config(hf: dict[str, Any], tie: bool) -> TransformerConfig:
  """A T5 config.json (with DEFAULTS) -> the TransformerConfig that computes the same function."""
  gated, activation = feed_forward(hf["feed_forward_proj"])
  decoder_layers = hf["num_layers"] if hf["num_decoder_layers"] is None else hf["num_decoder_layers"]
  try:
    return TransformerConfig(
      vocab_size=hf["vocab_size"], d_model=hf["d_model"], n_heads=hf["num_heads"], d_head=hf["d_kv"], d_ff=hf["d_ff"],
      n_encoder_layers=hf["num_layers"], n_decoder_layers=decoder_layers, dropout=float(hf["dropout_rate"]), max_len=hf["n_positions"],
      norm_first=True, final_norm=True, norm="rms", layer_norm_eps=float(hf["layer_norm_epsilon"]), activation=activation,
      gated_ffn=gated, linear_bias=False, scale_attention=False, scale_embedding=False, positional="relative",
      relative_buckets=hf["relative_attention_num_buckets"], relative_max_distance=hf["relative_attention_max_distance"],
      tie_embeddings=tie, scale_output=bool(hf.get("scale_decoder_outputs", hf["tie_word_embeddings"] is not False)),
      pad_id=hf["pad_token_id"], bos_id=hf["decoder_start_token_id"], eos_id=hf["eos_token_id"],
      decoder_start_id=hf["decoder_start_token_id"])
  except ConfigError as e:
    raise WeightsError(f"config.json does not describe a model tfm can build: {e}") from None


def expected_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
  """Every tfm tensor of a T5 model but the embeddings and the output layer, with its shape."""
  d, inner, ff, heads = config.d_model, config.n_heads * config.head_dim, config.d_ff, config.n_heads
  attn = {"q_proj.weight": (inner, d), "k_proj.weight": (inner, d), "v_proj.weight": (inner, d), "out_proj.weight": (d, inner)}
  ffn = {"ffn.fc1.weight": (ff, d), "ffn.fc2.weight": (d, ff), **({"ffn.gate.weight": (ff, d)} if config.gated_ffn else {})}
  common = {**{f"self_attn.{k}": s for k, s in attn.items()}, "self_attn_layer_norm.weight": (d,), **ffn, "final_layer_norm.weight": (d,)}
  cross = {**{f"encoder_attn.{k}": s for k, s in attn.items()}, "encoder_attn_layer_norm.weight": (d,)}
  out = {f"encoder.layers.{i}.{k}": s for i in range(config.n_encoder_layers) for k, s in common.items()}
  out.update({f"decoder.layers.{i}.{k}": s for i in range(config.n_decoder_layers) for k, s in {**common, **cross}.items()})
  buckets = (config.relative_buckets, heads)
  return {**out, "encoder.layer_norm.weight": (d,), "decoder.layer_norm.weight": (d,), "src_relative_bias.weight": buckets,
          "tgt_relative_bias.weight": buckets}


def convert(folder: str | os.PathLike) -> Conversion:
  """A T5 checkpoint folder -> a tfm Transformer's arrays and config, every name and shape checked."""
  folder = os.fspath(folder)
  if not os.path.isdir(folder): raise WeightsError(f"{folder} is not a directory; give a T5 checkpoint folder (config.json + model.safetensors)")
  raw = read_json(os.path.join(folder, "config.json"))
  hf = {**DEFAULTS, **raw}
  path = checkpoint_file(folder, SAVE_AS_SAFETENSORS)
  arrays = stored.Pending(stored.read_arrays(path, "T5 checkpoint")[1])
  tie = hf["tie_word_embeddings"] is not False
  conv = Conversion(t5_config(hf, tie), "transformer", {}, generation_config=read_generation_config(folder, raw))
  config = conv.config
  names = ["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"] + (["lm_head.weight"] if tie else [])
  present = tied(arrays, names, path, (config.vocab_size, config.d_model))
  embeddings = {"src_embed.weight": present[0]}
  if not tie:
    if "lm_head.weight" not in arrays: raise WeightsError(f"{path}: no lm_head.weight, but config.json unties it (tie_word_embeddings false)")
    embeddings.update({"tgt_embed.weight": present[0], "generator.weight": "lm_head.weight"})
    del arrays["lm_head.weight"]
    conv.mapped.append(("lm_head.weight", "generator.weight"))
  conv.mapped += [(name, "src_embed.weight" + (" (tied: tgt_embed, generator)" if tie else ", tgt_embed.weight")) for name in present]
  for name in present: del arrays[name]
  renamed = arrays.renamed(tfm_name)   # read as the model takes them
  stored.check_arrays(renamed, expected_shapes(config), path, values=False)   # the loader checks the values
  conv.arrays = ChainMap(conv.arrays, renamed, arrays.taken(embeddings))   # all read as the model takes them
  conv.mapped += [(name, tfm_name(name)) for name in arrays]
  conv.notes.append(f"{raw.get('model_type', 't5')}: pre-norm, RMS norms, no biases, unscaled q.k, relative position buckets "
                    f"{config.relative_buckets} up to distance {config.relative_max_distance}; FFN {hf['feed_forward_proj']} "
                    f"({config.activation}{', gated' if config.gated_ffn else ''}); output layer "
                    f"{'tied, decoder output x d_model^-0.5' if config.scale_output else 'untied' if not tie else 'tied'}")
  return conv
