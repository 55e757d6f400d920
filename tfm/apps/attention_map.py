"""Attention maps: where each output token of one translation looked in the source (3.2.3 encoder-decoder attention).

    amap = cross_attention(tfm.Translator.bundled(), "3rd of March, 2021")
    amap.weights                      # (layers, heads, output tokens, source tokens); each row sums to 1
    plot(amap, "map.png", layer=-1)   # the layer's mean over heads, then one panel per head (needs matplotlib)

The weights come from the model's own modules: the decoder runs over the translation as in training (teacher
forcing), and each layer's encoder_attn also hands back softmax(Q K^T / sqrt(d_k)) from tfm.nn.attention.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from tinygrad import Tensor

from tfm.nn.attention import MultiHeadAttention, attention_weights
from tfm.errors import InputError, TfmError
from tfm.generation import generate, lengths_to_eos
from tfm.nn.transformer import Transformer
from tfm.files import atomic_write


@dataclass(frozen=True)
class AttentionMap:
  """The cross-attention of one translation: row t is what output token t attended to while it was predicted."""
  text: str                 # the source text
  translation: str          # the decoded output
  source: list[str]         # the source tokens as text (S), eos included
  output: list[str]         # the output tokens as text (T), eos included
  weights: np.ndarray       # (layers, heads, T, S) float32

  def layer(self, index: int) -> np.ndarray:
    """One decoder layer's weights (heads, T, S); index counts from 0 as `decoder.layers.N` does, -1 is the last."""
    n = self.weights.shape[0]
    if not -n <= index < n:
      raise InputError(f"layer {index} does not exist: the decoder has {n} layers (give 0..{n - 1}, or -1 for the last)")
    return self.weights[index]


class _Recording:
  """Stands in for one layer's attention module: computes what it computes and keeps the attention weights."""

  def __init__(self, attn: MultiHeadAttention):
    self.attn, self.weights = attn, None

  def __call__(self, x: Tensor, source: Tensor, mask: Tensor | None = None) -> Tensor:
    k, v = self.attn.project_kv(source)
    self.weights = attention_weights(self.attn.split_heads(self.attn.q_proj(x)), k, mask, self.attn.scale)  # (B, H, T, S)
    return self.attn.attend(x, k, v, mask)


@contextlib.contextmanager
def recording(layers: list, attribute: str) -> Iterator[list[_Recording]]:
  """Each layer's attention module `attribute` (encoder_attn, self_attn) recorded for the block, put back afterwards
  (also on errors)."""
  recorders = [_Recording(getattr(layer, attribute)) for layer in layers]
  for layer, rec in zip(layers, recorders): setattr(layer, attribute, rec)
  try:
    yield recorders
  finally:
    for layer, rec in zip(layers, recorders): setattr(layer, attribute, rec.attn)


def _recording(model: Transformer) -> contextlib.AbstractContextManager[list[_Recording]]:
  """Every decoder layer's encoder_attn recorded for the block."""
  return recording(model.decoder.layers, "encoder_attn")


def attention_of(model: Transformer, src_ids, out_ids) -> np.ndarray:
  """Cross-attention weights (layers, heads, T, S) of one sequence pair: src_ids (1, S) and the output out_ids (1, T),
  which the decoder reads shifted right behind its start token, as it produced them."""
  src, out = model.ids(src_ids, "src_ids"), model.check_ids(out_ids, "out_ids")
  if src.shape[0] != 1 or out.shape[0] != 1:
    raise InputError(f"attention_of takes one sequence pair, got batches of {src.shape[0]} and {out.shape[0]}; pass [ids]")
  tgt = model.ids(np.concatenate([[[model.config.start_id]], out[:, :-1]], axis=1), "out_ids")
  with _recording(model) as recorders, model.on_device():
    model.run_decoder(tgt, model.run_encoder(src), model.padding_mask(src))
    stacked = Tensor.stack(*[rec.weights[0] for rec in recorders]).realize()  # (layers, H, T, S)
  return stacked.numpy().astype(np.float32)


def _token_text(tokenizer, i: int) -> str:
  """A token id as the axis label shows it: its text, or the name of a special token (which decodes to nothing)."""
  pieces = getattr(tokenizer, "pieces", None)  # a Marian vocabulary: the SentencePiece piece itself
  if pieces is not None: return pieces[i]
  specials = {tokenizer.eos_id: "</s>", tokenizer.pad_id: "<pad>", getattr(tokenizer, "bos_id", None): "<s>"}
  if i in specials: return specials[i]
  text = tokenizer.decode([[i]])[0]
  return "␣" if text == " " else text


def cross_attention(translator, text: str, beam_size: int | None = None, max_len: int | None = None) -> AttentionMap:
  """Translate one text with a tfm.Translator and return the cross-attention of every decoder layer and head."""
  if not isinstance(text, str) or not text:
    raise InputError(f"text must be a non-empty string, got {text!r}")
  model, tokenizer = translator.model, translator.tokenizer
  src = np.asarray(tokenizer.encode([text]), dtype=np.int32)
  if src.shape[1] > model.config.max_len:
    raise InputError(f"the text is {src.shape[1]} tokens long, more than the model's max_len={model.config.max_len}; "
                     f"give a shorter text")
  best = generate(model, src, max_len=max_len, beam_size=beam_size)[:1]   # row 0: the best hypothesis
  ids = [int(i) for i in best[0, :lengths_to_eos(best, tokenizer.eos_id)[0]]]   # without the padding after eos
  weights = attention_of(model, src, [ids])
  return AttentionMap(text, tokenizer.decode([ids])[0], [_token_text(tokenizer, int(i)) for i in src[0]],
                      [_token_text(tokenizer, i) for i in ids], weights)


def figure_class():
  """matplotlib's Figure, used without pyplot: no GUI backend, no global state."""
  try:
    from matplotlib.figure import Figure
  except ImportError:
    raise TfmError("drawing attention maps needs matplotlib, which is not installed: pip install 'tfm[viz]' "
                   "(or pip install matplotlib)") from None
  return Figure


def plot(amap: AttentionMap, path: str | os.PathLike, layer: int = -1) -> str:
  """Write a PNG of one decoder layer: its mean over heads, large, then each head; returns the path written."""
  Figure = figure_class()
  path = os.fspath(path)
  if not path.lower().endswith(".png"): raise InputError(f"{path}: the attention map is written as PNG; give a path ending in .png")
  heads = amap.layer(layer)  # (H, T, S)
  index = layer % amap.weights.shape[0]
  n_heads, t, s = heads.shape
  cell = 0.28  # inches per token in the large panel: room for one character label
  width = max(8.0, s * cell + 2.0)
  small = width / n_heads
  fig = Figure(figsize=(width, t * cell + 2.0 + small * t / s + 0.8), layout="constrained")
  grid = fig.add_gridspec(2, n_heads, height_ratios=[t * cell + 1.0, small * t / s + 0.3])
  ax = fig.add_subplot(grid[0, :])
  image = ax.imshow(heads.mean(0), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
  ax.set_xticks(range(s), amap.source, fontsize=9)
  ax.set_yticks(range(t), amap.output, fontsize=9)
  ax.set_xlabel("source token")
  ax.set_ylabel("output token")
  ax.set_title(f"{amap.text!r} -> {amap.translation!r}: decoder layer {index}, mean over {n_heads} heads")
  fig.colorbar(image, ax=ax, label="attention weight", shrink=0.8)
  for h in range(n_heads):
    axh = fig.add_subplot(grid[1, h])
    axh.imshow(heads[h], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    axh.set_title(f"head {h}", fontsize=9)
    axh.set_xticks([])
    axh.set_yticks([])
  atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
  return path
