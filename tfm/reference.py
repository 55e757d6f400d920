"""An independent float64 numpy Transformer: the oracle every backend is checked against.

Written from the paper (and the config's documented switches), not from tfm's tinygrad code. It reads weights
by their checkpoint names from a plain dict of numpy arrays, so it shares nothing with tfm but the names: keep it
that way (numpy only, no tinygrad, no other tfm module). It ships in the package so that `tfm compare` can check
backends against it at run time; the tests import it from here too. `VisionReference` is the Vision Transformer's.
"""
from __future__ import annotations

import math

import numpy as np


def _sinusoids(length: int, d: int, layout: str) -> np.ndarray:
  table = np.zeros((length, d))
  for pos in range(length):
    for i in range(d // 2):
      # M2M100's layout spreads the frequencies over d/2 - 1 steps instead of d/2
      angle = pos * math.exp(-math.log(10000) * i / (d // 2 - 1)) if layout == "m2m100" else pos / 10000 ** (2 * i / d)
      if layout == "interleaved": table[pos, 2 * i], table[pos, 2 * i + 1] = math.sin(angle), math.cos(angle)
      else: table[pos, i], table[pos, d // 2 + i] = math.sin(angle), math.cos(angle)
  return table


def _layer_norm(x, w, b, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


def _activation(x, name):
  if name == "relu": return np.maximum(x, 0)
  if name == "gelu": return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
  if name == "gelu_tanh": return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
  return x / (1 + np.exp(-x))  # swish


def _softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _bucket(distance: int, bidirectional: bool, buckets: int, max_distance: int) -> int:
  """T5's bucket of a key-minus-query distance: exact for near ones, logarithmic (in float32) up to max_distance."""
  first = 0
  if bidirectional:
    buckets //= 2
    first, distance = (buckets if distance > 0 else 0), abs(distance)
  else:
    distance = max(-distance, 0)
  exact = buckets // 2
  if distance < exact: return first + distance
  f32 = np.float32
  far = np.log(f32(distance) / f32(exact)) / f32(math.log(max_distance / exact)) * f32(buckets - exact)
  return first + min(exact + int(far), buckets - 1)


class Reference:
  """Forward pass of the encoder-decoder in float64. `weights` maps checkpoint names to arrays; `cfg` is a dict."""

  def __init__(self, weights: dict[str, np.ndarray], cfg: dict):
    self.w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    self.cfg = cfg

  def _linear(self, x, name):
    y = x @ self.w[f"{name}.weight"].T
    return y + self.w[f"{name}.bias"] if f"{name}.bias" in self.w else y

  def _norm(self, x, name):
    if self.cfg.get("norm", "layer") == "rms":   # T5's: no mean, no bias
      return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.cfg["layer_norm_eps"]) * self.w[f"{name}.weight"]
    return _layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.cfg["layer_norm_eps"])

  def _relative(self, side, tq, tk):
    """T5's relative position bias of a stack (H, tq, tk), or 0 for models without one."""
    cfg = self.cfg
    if cfg["positional"] != "relative": return 0.0
    table = self.w[f"{side}_relative_bias.weight"]   # (buckets, H)
    index = [[_bucket(j - i, side == "src", cfg["relative_buckets"], cfg["relative_max_distance"]) for j in range(tk)] for i in range(tq)]
    return table[np.array(index)].transpose(2, 0, 1)

  def _mha(self, name, xq, xkv, allowed, bias=0.0):
    """allowed: bool (B, Tq, Tk), True where query may attend to key; bias: added to every head's scores (H, Tq, Tk)."""
    h = self.cfg["n_heads"]
    b, tq, _ = xq.shape
    tk, dk = xkv.shape[1], self.cfg.get("d_head") or self.cfg["d_model"] // h
    q = self._linear(xq, f"{name}.q_proj").reshape(b, tq, h, dk).transpose(0, 2, 1, 3)
    k = self._linear(xkv, f"{name}.k_proj").reshape(b, tk, h, dk).transpose(0, 2, 1, 3)
    v = self._linear(xkv, f"{name}.v_proj").reshape(b, tk, h, dk).transpose(0, 2, 1, 3)
    scores = q @ k.transpose(0, 1, 3, 2)
    if self.cfg.get("scale_attention", True): scores = scores / math.sqrt(dk)
    scores = np.where(allowed[:, None], scores + bias, -np.inf)
    out = (_softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(b, tq, h * dk)
    return self._linear(out, f"{name}.out_proj")

  def _sublayer(self, x, fn, norm_name):
    if self.cfg["norm_first"]: return x + fn(self._norm(x, norm_name))
    return self._norm(x + fn(x), norm_name)

  def _ffn(self, name, x):
    h = _activation(self._linear(x, f"{name}.fc1"), self.cfg["activation"])
    if self.cfg.get("gated_ffn"): h = h * self._linear(x, f"{name}.gate")   # T5 v1.1's gated FFN
    return self._linear(h, f"{name}.fc2")

  def _embed(self, side, ids):
    """side "src" or "tgt": token embeddings (scaled), positions from row position_offset on (the side's learned table or
    the sinusoids), the side's embedding LayerNorm where configured."""
    d, cfg = self.cfg["d_model"], self.cfg
    table = "src_embed.weight" if side == "src" or cfg["tie_embeddings"] else "tgt_embed.weight"
    x = self.w[table][ids]
    if cfg["scale_embedding"]: x = x * math.sqrt(d)
    first, length = cfg.get("position_offset", 0), ids.shape[1]
    if cfg["positional"] == "relative": positions = np.zeros((length, d))   # T5: positions are attention biases
    elif cfg["positional"] == "learned": positions = self.w[f"{side}_positions.weight"][first:first + length]
    else: positions = _sinusoids(first + length, d, cfg["positional"])[first:]
    x = x + positions[None]
    return self._norm(x, f"{side}_embed_norm") if cfg.get("embed_norm") else x

  def _final_norm(self):
    return self.cfg["norm_first"] if self.cfg.get("final_norm") is None else self.cfg["final_norm"]

  def _conv(self, x, name, stride):
    """A 1-d convolution, kernel 3, padding 1: out[b, o, t] = bias[o] + sum over c, j of w[o, c, j] x[b, c, stride t + j - 1]."""
    w = self.w[f"{name}.weight"]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1)))
    frames = (x.shape[2] - 1) // stride + 1
    taps = [padded[:, :, j:j + stride * (frames - 1) + 1:stride] for j in range(3)]   # (B, C, frames) each
    return sum(np.einsum("oc,bct->bot", w[:, :, j], tap) for j, tap in enumerate(taps)) + self.w[f"{name}.bias"][None, :, None]

  def _audio(self, features):
    """Whisper's front end: gelu(conv1), gelu(conv2 of stride 2), frames as tokens, plus the encoder's positions."""
    x = _activation(self._conv(np.asarray(features, np.float64), "audio.conv1", 1), "gelu")
    x = _activation(self._conv(x, "audio.conv2", 2), "gelu").transpose(0, 2, 1)
    return x + self.w["src_positions.weight"][:x.shape[1]][None]

  def encode(self, src):
    src = np.asarray(src)
    if self.cfg.get("n_mels"):   # an audio encoder: every frame attends to every frame
      x = self._audio(src)
      allowed = np.ones((x.shape[0], x.shape[1], x.shape[1]), bool)
    else:
      keep = src != self.cfg["pad_id"]
      allowed = np.broadcast_to(keep[:, None, :], (src.shape[0], src.shape[1], src.shape[1]))
      x = self._embed("src", src)
    bias = self._relative("src", src.shape[1], src.shape[1])
    for i in range(self.cfg["n_encoder_layers"]):
      p = f"encoder.layers.{i}"
      x = self._sublayer(x, lambda h, p=p: self._mha(f"{p}.self_attn", h, h, allowed, bias), f"{p}.self_attn_layer_norm")
      x = self._sublayer(x, lambda h, p=p: self._ffn(f"{p}.ffn", h), f"{p}.final_layer_norm")
    return self._norm(x, "encoder.layer_norm") if self._final_norm() else x

  def logits(self, src, tgt):
    src, tgt = np.asarray(src), np.asarray(tgt)
    memory = self.encode(src)
    b, t = tgt.shape
    causal = np.broadcast_to(np.tril(np.ones((t, t), dtype=bool)), (b, t, t))
    keep = np.ones(memory.shape[:2], bool) if self.cfg.get("n_mels") else src != self.cfg["pad_id"]
    cross = np.broadcast_to(keep[:, None, :], (b, t, memory.shape[1]))
    x = self._embed("tgt", tgt)
    bias = self._relative("tgt", t, t)
    for i in range(self.cfg["n_decoder_layers"]):
      p = f"decoder.layers.{i}"
      x = self._sublayer(x, lambda h, p=p: self._mha(f"{p}.self_attn", h, h, causal, bias), f"{p}.self_attn_layer_norm")
      x = self._sublayer(x, lambda h, p=p: self._mha(f"{p}.encoder_attn", h, memory, cross), f"{p}.encoder_attn_layer_norm")
      x = self._sublayer(x, lambda h, p=p: self._ffn(f"{p}.ffn", h), f"{p}.final_layer_norm")
    if self._final_norm(): x = self._norm(x, "decoder.layer_norm")
    if self.cfg.get("scale_output"): x = x * self.cfg["d_model"] ** -0.5
    out_w = self.w["src_embed.weight"] if self.cfg["tie_embeddings"] else self.w["generator.weight"]
    y = x @ out_w.T
    return y + self.w["generator.bias"] if "generator.bias" in self.w else y


class VisionReference:
  """Forward pass of the Vision Transformer in float64, written from the ViT paper (eq. 1-4): patches flattened and
  projected, a class token in front, learned positions added, pre-norm encoder layers, a final LayerNorm, the head
  on the class token. Weights by their tfm checkpoint names; `cfg` is a VisionConfig as a dict."""

  def __init__(self, weights: dict[str, np.ndarray], cfg: dict):
    self.w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    self.cfg = cfg
    self.attention: list[np.ndarray] = []   # each layer's softmax weights (B, H, T, T) of the last forward pass

  def _linear(self, x, name):
    return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

  def _norm(self, x, name):
    return _layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.cfg["layer_norm_eps"])

  def _self_attention(self, name, x):
    h = self.cfg["n_heads"]
    b, t, d = x.shape
    dk = d // h
    q, k, v = (self._linear(x, f"{name}.{p}_proj").reshape(b, t, h, dk).transpose(0, 2, 1, 3) for p in "qkv")
    weights = _softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(dk))
    self.attention.append(weights)
    return self._linear((weights @ v).transpose(0, 2, 1, 3).reshape(b, t, d), f"{name}.out_proj")

  def features(self, pixels):
    """pixels (B, C, H, W) -> the final LayerNorm's output for every token (B, 1 + patches, d)."""
    x = np.asarray(pixels, dtype=np.float64)
    b, c, size, _ = x.shape
    p = self.cfg["patch_size"]
    patches = []   # row by row, left to right; each patch channel-major, as a stride-p convolution reads it
    for i in range(0, size, p):
      for j in range(0, size, p):
        patches.append(x[:, :, i:i + p, j:j + p].reshape(b, c * p * p))
    tokens = self._linear(np.stack(patches, axis=1), "patch_embed")
    z = np.concatenate([np.broadcast_to(self.w["cls_token"], (b, 1, tokens.shape[2])), tokens], axis=1)
    z = z + self.w["position_embeddings"]
    self.attention = []
    for i in range(self.cfg["n_layers"]):
      name = f"encoder.layers.{i}"
      z = z + self._self_attention(f"{name}.self_attn", self._norm(z, f"{name}.self_attn_layer_norm"))
      h = _activation(self._linear(self._norm(z, f"{name}.final_layer_norm"), f"{name}.ffn.fc1"), self.cfg["activation"])
      z = z + self._linear(h, f"{name}.ffn.fc2")
    return self._norm(z, "encoder.layer_norm")

  def logits(self, pixels):
    """pixels (B, C, H, W) -> class logits (B, num_labels), from the class token."""
    return self._linear(self.features(pixels)[:, 0], "classifier")
