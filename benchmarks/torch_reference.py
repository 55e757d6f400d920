"""A PyTorch twin of tfm's Transformer: the same architecture, the same attribute names, so it loads tfm's weights
by name and the benchmarks time the same model, with the same numbers, in both frameworks.

    ref = TorchTransformer.from_tfm(model)          # copies every weight of a tfm.Transformer
    logits = ref(src, tgt)                          # torch LongTensors (B, S), (B, T) -> (B, T, V)
    ids = ref.greedy(src, steps)                    # incremental decode with a per-layer KV cache

PyTorch is an optional extra (`pip install -e .[bench]`); importing this module without it raises ImportError.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tfm.config import TransformerConfig
from tfm.nn.layers import sinusoid_table


class MultiHeadAttention(nn.Module):
  """3.2.2 Multi-head attention with separate q/k/v/out projections, as tfm names them."""

  def __init__(self, d_model: int, n_heads: int):
    super().__init__()
    self.n_heads, self.head_dim = n_heads, d_model // n_heads
    self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d_model, d_model) for _ in range(4))

  def split_heads(self, x: torch.Tensor) -> torch.Tensor:
    b, t, _ = x.shape
    return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)

  def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    out = F.scaled_dot_product_attention(self.split_heads(self.q_proj(x)), k, v, attn_mask=mask)
    b, _, t, _ = out.shape
    return self.out_proj(out.transpose(1, 2).reshape(b, t, -1))  # (B, T, d)

  def forward(self, x: torch.Tensor, source: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return self.attend(x, self.split_heads(self.k_proj(source)), self.split_heads(self.v_proj(source)), mask)


class FeedForward(nn.Module):
  """3.3 Position-wise feed-forward network."""

  def __init__(self, d_model: int, d_ff: int, activation: str):
    super().__init__()
    self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
    self.act = {"relu": F.relu, "gelu": F.gelu, "swish": F.silu}[activation]

  def forward(self, x: torch.Tensor) -> torch.Tensor: return self.fc2(self.act(self.fc1(x)))


def _add_norm(x, sublayer, norm, norm_first: bool, dropout: float, training: bool):
  if norm_first: return x + F.dropout(sublayer(norm(x)), dropout, training)
  return norm(x + F.dropout(sublayer(x), dropout, training))


class EncoderLayer(nn.Module):
  def __init__(self, c: TransformerConfig):
    super().__init__()
    self.self_attn = MultiHeadAttention(c.d_model, c.n_heads)
    self.self_attn_layer_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
    self.ffn = FeedForward(c.d_model, c.d_ff, c.activation)
    self.final_layer_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
    self.norm_first, self.p = c.norm_first, c.dropout

  def forward(self, x, mask):
    x = _add_norm(x, lambda h: self.self_attn(h, h, mask), self.self_attn_layer_norm, self.norm_first, self.p, self.training)
    return _add_norm(x, self.ffn, self.final_layer_norm, self.norm_first, self.p, self.training)


class DecoderLayer(nn.Module):
  def __init__(self, c: TransformerConfig):
    super().__init__()
    self.self_attn = MultiHeadAttention(c.d_model, c.n_heads)
    self.self_attn_layer_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
    self.encoder_attn = MultiHeadAttention(c.d_model, c.n_heads)
    self.encoder_attn_layer_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
    self.ffn = FeedForward(c.d_model, c.d_ff, c.activation)
    self.final_layer_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
    self.norm_first, self.p = c.norm_first, c.dropout

  def forward(self, x, memory, self_mask, memory_mask, cache: list | None = None):
    def self_attention(h):
      a = self.self_attn
      k, v = a.split_heads(a.k_proj(h)), a.split_heads(a.v_proj(h))
      if cache is not None:  # incremental decode: this position's keys/values join the earlier ones
        if cache: k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        cache[:] = [k, v]
      return a.attend(h, k, v, self_mask)
    x = _add_norm(x, self_attention, self.self_attn_layer_norm, self.norm_first, self.p, self.training)
    x = _add_norm(x, lambda h: self.encoder_attn(h, memory, memory_mask), self.encoder_attn_layer_norm,
                  self.norm_first, self.p, self.training)
    return _add_norm(x, self.ffn, self.final_layer_norm, self.norm_first, self.p, self.training)


class Stack(nn.Module):
  def __init__(self, layers: list[nn.Module], c: TransformerConfig):
    super().__init__()
    self.layers = nn.ModuleList(layers)
    self.layer_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.use_final_norm else None

  def norm(self, x): return x if self.layer_norm is None else self.layer_norm(x)


class TorchTransformer(nn.Module):
  """tfm's Transformer in PyTorch eager mode: `state_dict()` names equal `get_state_dict(tfm_model)` names."""

  def __init__(self, config: TransformerConfig):
    super().__init__()
    c = self.config = config
    self.src_embed = nn.Embedding(c.vocab_size, c.d_model)
    self.tgt_embed = self.src_embed if c.tie_embeddings else nn.Embedding(c.vocab_size, c.d_model)
    self.encoder = Stack([EncoderLayer(c) for _ in range(c.n_encoder_layers)], c)
    self.decoder = Stack([DecoderLayer(c) for _ in range(c.n_decoder_layers)], c)
    self.generator = nn.Linear(c.d_model, c.vocab_size, bias=c.output_bias)
    if c.tie_embeddings: self.generator.weight = self.src_embed.weight
    pe = torch.from_numpy(sinusoid_table(c.max_len, c.d_model, c.positional).astype(np.float32))
    self.register_buffer("pe", pe, persistent=False)  # fixed (3.5), not a weight: kept out of the state dict

  @classmethod
  def from_tfm(cls, model) -> TorchTransformer:
    """The twin of a tfm.Transformer, holding a float32 copy of every one of its weights (strict: names and shapes)."""
    from tinygrad.nn.state import get_state_dict
    ref = cls(model.config)
    state = {name: torch.from_numpy(t.float().numpy().copy()) for name, t in get_state_dict(model).items()}
    ref.load_state_dict(state, strict=True)
    return ref.eval()

  def embed(self, table: nn.Embedding, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
    x = table(ids)
    if self.config.scale_embedding: x = x * math.sqrt(self.config.d_model)
    return F.dropout(x + self.pe[offset:offset + ids.shape[1]], self.config.dropout, self.training)

  def src_mask(self, src: torch.Tensor) -> torch.Tensor:
    return (src != self.config.pad_id)[:, None, None, :]  # (B, 1, 1, S), True = may attend

  def encode(self, src: torch.Tensor) -> torch.Tensor:
    x, mask = self.embed(self.src_embed, src), self.src_mask(src)
    for layer in self.encoder.layers: x = layer(x, mask)
    return self.encoder.norm(x)

  def decode(self, tgt: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
    t = tgt.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    x = self.embed(self.tgt_embed, tgt)
    for layer in self.decoder.layers: x = layer(x, memory, causal, memory_mask)
    return self.generator(self.decoder.norm(x))

  def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    return self.decode(tgt, self.encode(src), self.src_mask(src))

  @torch.no_grad()
  def greedy(self, src: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding for `steps` positions with a KV cache per decoder layer (no early stop at eos): (B, steps)."""
    memory, memory_mask = self.encode(src), self.src_mask(src)
    caches: list[list] = [[] for _ in self.decoder.layers]
    token = torch.full((src.shape[0], 1), self.config.start_id, dtype=torch.long)
    out = []
    for pos in range(steps):
      x = self.embed(self.tgt_embed, token, offset=pos)
      for layer, cache in zip(self.decoder.layers, caches): x = layer(x, memory, None, memory_mask, cache)
      token = self.generator(self.decoder.norm(x))[:, -1].argmax(-1, keepdim=True)
      out.append(token)
    return torch.cat(out, 1)
