"""The encoder-decoder Transformer (paper section 3): embeddings, the encoder and decoder stacks, the generator.

    ids (B, S) -> embed * sqrt(d_model) + PE -> dropout -> N x EncoderLayer -> memory (B, S, d)
    ids (B, T) -> embed * sqrt(d_model) + PE -> dropout -> N x DecoderLayer(memory) -> linear -> logits (B, T, V)
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from tinygrad import Tensor, dtypes

from tfm.nn.attention import KVCache, causal_mask, padding_mask, with_ones
from tfm.config import TransformerConfig, VisionConfig
from tfm.errors import InputError
from tfm.nn.layers import DecoderLayer, EncoderLayer, LayerNorm, LearnedPositions, PositionalEncoding, layer_norm_one_pass, norm_layer
from tfm.nn.linear import Embedding, Linear, linear_layers
from tfm.nn.audio import ConvFrontEnd, check_features
from tfm.nn.relative import RelativeBias
from tfm.nn.base import Model, realized_on, unique_state, xavier_uniform
from tfm.runtime.memory import to_device
from tfm.runtime.placement import batch_axis, choose, place, resolve_device


GENERATOR_MULTIPLE = 64  # tinygrad-0.14: a vocabulary such as 3 x 19,367 leaves its heuristics no tile wider than 3 (step_logits)


class Encoder:
  """The encoder stack: N identical layers over embedded inputs, with a final LayerNorm in pre-norm models.
  A VisionConfig builds it too (tfm.nn.vit): the stack reads only the encoder's fields, which both configs name alike."""

  def __init__(self, config: TransformerConfig | VisionConfig):
    self.layers = [EncoderLayer(config) for _ in range(config.n_encoder_layers)]
    self.layer_norm = norm_layer(config) if config.use_final_norm else None

  def __call__(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
    for layer in self.layers: x = layer(x, mask)
    return x if self.layer_norm is None else self.layer_norm(x)


class Decoder:
  """The decoder stack: N identical layers over embedded targets, attending to the encoder output."""

  def __init__(self, config: TransformerConfig):
    self.layers = [DecoderLayer(config) for _ in range(config.n_decoder_layers)]
    self.layer_norm = norm_layer(config) if config.use_final_norm else None

  def __call__(self, x: Tensor, memory: Tensor, self_mask: Tensor | None = None, memory_mask: Tensor | None = None) -> Tensor:
    for layer in self.layers: x = layer(x, memory, self_mask, memory_mask)
    return x if self.layer_norm is None else self.layer_norm(x)


class Transformer(Model):
  """The encoder-decoder Transformer of "Attention Is All You Need".

  With `tie_embeddings` (the paper's 3.4) the source embedding, the target embedding and the generator share
  one matrix: `src_embed`, `tgt_embed` and `generator.weight` are the same tensor.

  On several devices (device="CPU*2", ("CUDA:0", "CUDA:1")), `device` is their tuple and `parallel` says how the
  model is split over them: "data" or "tensor" (tfm.runtime.placement; None: by size).
  """

  def __init__(self, config: TransformerConfig, device: Any = None, initialise: bool = True, parallel: str | None = None):
    """initialise=False leaves the weights unset (empty buffers): for loaders that replace every one."""
    self.config = config
    self.device, self.target = resolve_device(device)
    self.parallel = choose(parallel, config, self.device)   # checked before anything is built
    d, v = config.d_model, config.vocab_size
    with self.on_device():
      self.src_embed = Embedding(v, d)
      self.tgt_embed = self.src_embed if config.tie_embeddings else Embedding(v, d)
      self.encoder, self.decoder = Encoder(config), Decoder(config)
      self.generator = Linear(d, v, bias=config.output_bias)
      if config.tie_embeddings: self.generator.weight = self.src_embed.weight
      if config.positional == "learned":
        self.src_positions, self.tgt_positions = LearnedPositions(config, config.source_positions), LearnedPositions(config)
      if config.n_mels: self.audio = ConvFrontEnd(config)   # Whisper: the encoder reads log-mel features
      if config.positional == "relative":   # T5's: one bias table per stack, the encoder's bidirectional
        self.src_relative_bias, self.tgt_relative_bias = RelativeBias(config, True), RelativeBias(config, False)
      if config.embed_norm:   # BART's layernorm_embedding: one per stack
        self.src_embed_norm, self.tgt_embed_norm = (LayerNorm(d, eps=config.layer_norm_eps) for _ in range(2))
      if self.parallel is not None: self.lay_out(self.device, self.parallel)
      if initialise: self._initialise()
    self.positions = self._sinusoids()

  def _sinusoids(self) -> PositionalEncoding | None:
    """The fixed table the embeddings add, or None where positions are weights (learned, relative)."""
    return None if self.config.positional in ("learned", "relative") else PositionalEncoding(self.config, self.device)

  def lay_out(self, devices: tuple[str, ...], parallel: str | None = None) -> None:
    """Lay the unset weights out over `devices` as `parallel` says (tfm.runtime.placement); also for NULL renders (tfm.apps.compare)."""
    self.device, self.parallel = devices, choose(parallel, self.config, devices)
    self.positions = self._sinusoids()
    place(self, unique_state(self))

  def initial_value(self, name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Xavier-uniform matrices and zero biases (as nn.Transformer), N(0, d^-1/2) embeddings (scaled back up by sqrt(d)),
    learned positions N(0, 0.02)."""
    if "norm" in name: return np.ones(shape) if name.endswith(".weight") else np.zeros(shape)
    if name.endswith("embed.weight"): return rng.normal(0.0, self.config.d_model ** -0.5, shape)
    if name.endswith("positions.weight") or name.endswith("relative_bias.weight"): return rng.normal(0.0, 0.02, shape)
    return xavier_uniform(shape, rng) if name.endswith(".weight") else np.zeros(shape)

  # --- inputs -----------------------------------------------------------------------------------------------

  def ids(self, ids: Any, name: str = "ids") -> Tensor:
    """Check token ids (B, T) and put them on the model's device: a Tensor, a numpy array or nested lists of ints.
    On several devices a data-parallel model splits them by rows (tfm.runtime.placement.batch_axis)."""
    return self.placed(self.check_ids(ids, name))

  def placed(self, array: np.ndarray) -> Tensor:
    """Checked ids on the model's device; a data-parallel model's split by rows over its devices."""
    if self.parallel is None: return Tensor(array, device=self.device)
    return to_device(array, self.device, axis=batch_axis(self, array.shape[0]))

  def check_ids(self, ids: Any, name: str = "ids") -> np.ndarray:
    """`ids` checked as `ids()` checks them, as an int32 numpy array on the host (generation pads them there)."""
    try:
      arr = ids.numpy() if isinstance(ids, Tensor) else np.asarray(ids)
    except ValueError:  # numpy refuses rows of different lengths
      raise InputError(f"{name} has rows of different lengths; pad every row to the longest with pad_id={self.config.pad_id}") from None
    if arr.dtype == object or arr.dtype.kind not in "iu":  # bools are not token ids: True would read as id 1
      raise InputError(f"{name} must be integer token ids, got dtype {arr.dtype}; convert with np.asarray(..., dtype=np.int32)")
    if arr.ndim != 2:
      raise InputError(f"{name} must have shape (batch, length), got shape {arr.shape}; wrap a single sequence as [ids]")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
      raise InputError(f"{name} is empty (shape {arr.shape}): give at least one sequence of at least one token")
    if arr.shape[1] > self.config.max_len:
      raise InputError(f"{name} has length {arr.shape[1]}, longer than max_len={self.config.max_len}; "
                       f"truncate the input or use a config with a larger max_len")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= self.config.vocab_size:
      bad = lo if lo < 0 else hi
      raise InputError(f"{name}: token id {bad} out of range for vocab_size={self.config.vocab_size} "
                       f"(ids must be in [0, {self.config.vocab_size - 1}])")
    return arr.astype(np.int32)

  def check_source(self, src: Any, name: str = "src_ids") -> np.ndarray:
    """The encoder's input checked: token ids (check_ids), or an audio encoder's log-mel features (check_features)."""
    return check_features(src, self.config, name) if self.config.n_mels else self.check_ids(src, name)

  def source_mask(self, src: Tensor) -> Tensor | None:
    """What attention over the source may look at: its real tokens (padding_mask), or every frame of audio (None)."""
    return None if self.config.n_mels else self.padding_mask(src)

  def padding_mask(self, src_ids: Tensor) -> Tensor:
    """(B, 1, 1, S), True at real source tokens: what every attention over the source may look at."""
    return padding_mask(src_ids, self.config.pad_id)

  # --- the forward pass -------------------------------------------------------------------------------------

  def embed(self, side: str, ids: Tensor, offset: int = 0) -> Tensor:
    """3.4 + 3.5: token embedding (x sqrt(d_model) when configured) plus the positional encoding (the stack's own
    learned table, or the shared sinusoids), then the embedding LayerNorm where configured, then dropout.
    side: "src" (the encoder's inputs) or "tgt" (the decoder's)."""
    table = self.src_embed if side == "src" else self.tgt_embed
    x = table(ids)
    if self.config.scale_embedding: x = x * math.sqrt(self.config.d_model)
    if self.config.positional != "relative":
      positions = self.positions or (self.src_positions if side == "src" else self.tgt_positions)
      x = x + positions(ids.shape[1], offset).cast(x.dtype)
    if self.config.embed_norm: x = (self.src_embed_norm if side == "src" else self.tgt_embed_norm)(x)
    return x.dropout(self.config.dropout)

  def encode(self, src_ids: Any) -> Tensor:
    """Source ids (B, S) -> memory (B, S, d_model)."""
    return self.forward("encoder", (self.check_source(src_ids, "src_ids"),), self.run_encoder)

  def decode(self, tgt_ids: Any, memory: Tensor, src_mask: Tensor | None = None) -> Tensor:
    """Target ids (B, T) attending causally to themselves and to memory (B, S, d) -> logits (B, T, vocab_size).

    `src_mask` (B, 1, 1, S), True at real source tokens, is `padding_mask(src_ids)`; None attends to all of memory.
    """
    tgt = self.ids(tgt_ids, "tgt_ids")
    self._check_memory(memory, src_mask, tgt.shape[0])
    return self._result(lambda: self.run_decoder(tgt, memory, src_mask))

  def _check_memory(self, memory: Any, src_mask: Any, batch: int) -> None:
    """decode's memory must be encode's output for the same batch: a broadcast over a wrong batch is silent garbage."""
    if not isinstance(memory, Tensor) or memory.ndim != 3 or memory.shape[0] != batch or memory.shape[2] != self.config.d_model:
      got = f"shape {tuple(memory.shape)}" if isinstance(memory, Tensor) else type(memory).__name__
      raise InputError(f"memory must be a Tensor (batch={batch}, source length, d_model={self.config.d_model}) as encode() "
                       f"returns it for the same batch, got {got}; pass model.encode(src_ids)")
    if src_mask is not None:
      s = memory.shape[1]
      if not isinstance(src_mask, Tensor) or tuple(src_mask.shape) not in ((batch, 1, 1, s), (1, 1, 1, s)):
        got = f"shape {tuple(src_mask.shape)}" if isinstance(src_mask, Tensor) else type(src_mask).__name__
        raise InputError(f"src_mask must be a Tensor ({batch}, 1, 1, {s}) as model.padding_mask(src_ids) returns it, got {got}")

  def __call__(self, src_ids: Any, tgt_ids: Any) -> Tensor:
    """Teacher-forced forward pass: logits (B, T, vocab_size) for every target position."""
    src, tgt = self.check_source(src_ids, "src_ids"), self.check_ids(tgt_ids, "tgt_ids")
    if src.shape[0] != tgt.shape[0]:
      raise InputError(f"src_ids has batch size {src.shape[0]} but tgt_ids has {tgt.shape[0]}: give one target row per source row")
    return self.forward("logits", (src, tgt), lambda s, t: self.run_decoder(t, self.run_encoder(s), self.source_mask(s)))

  def _result(self, compute) -> Tensor: return realized_on(self, compute)

  # checked-input versions of encode/decode: ids already on the device (generation and training call these)

  def run_encoder(self, src: Tensor) -> Tensor:
    with self.on_device():
      if self.config.n_mels:   # Whisper: the convolutions over the spectrogram, then the encoder's positions
        x = self.audio(src)
        return self.encoder((x + self.src_positions(x.shape[1]).cast(x.dtype)).dropout(self.config.dropout))
      mask = self.padding_mask(src)
      if self.config.positional == "relative": mask = mask.where(self.src_relative_bias.full(src.shape[1], src.shape[1]), -math.inf)
      return self.encoder(self.embed("src", src), mask)

  def run_decoder(self, tgt: Tensor, memory: Tensor, src_mask: Tensor | None) -> Tensor:
    with self.on_device():
      t = tgt.shape[1]
      mask = causal_mask(t, self.device)
      if self.config.positional == "relative": mask = mask.where(self.tgt_relative_bias.full(t, t), -math.inf)
      return self.generator(self.scaled_output(self.decoder(self.embed("tgt", tgt), memory, mask, src_mask)))

  def scaled_output(self, x: Tensor) -> Tensor:
    """The decoder's output as the output layer reads it: times d_model^-0.5 where configured (T5's tied head)."""
    return x * self.config.d_model ** -0.5 if self.config.scale_output else x

  # incremental decoding (generation): one target position per call, earlier positions held in KV caches

  def memory_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Each decoder layer's cross-attention keys (B, H, S, hd) and values with their ones column (B, H, S, value_width(hd)) of
    memory (B, S, d), as `decode_step` takes them: projected once per source."""
    with self.on_device():
      return [(k, with_ones(v)) for k, v in (layer.encoder_attn.project_kv(memory) for layer in self.decoder.layers)]

  def decode_step(self, tokens: Tensor, pos, caches: list[KVCache], memory_kv: list[tuple[Tensor, Tensor]],
                  src_mask: Tensor | None, origin: Tensor | None = None) -> Tensor:
    """tokens (N, 1) at target position pos (an int or a bound Variable) -> logits (N, vocab_size).

    Equals the last row of `run_decoder` over the whole prefix: earlier positions come from `caches` (one KVCache per
    decoder layer, updated here), the source from `memory_kv`. `origin` (N,) reorders cached rows first (beam search)."""
    with self.on_device():
      x = self.embed("tgt", tokens, offset=pos)
      bias = self.tgt_relative_bias.row(pos, caches[0].length) if self.config.positional == "relative" and caches else None
      for layer, cache, kv in zip(self.decoder.layers, caches, memory_kv, strict=True):
        x = layer.step(x, cache, kv, src_mask, pos, origin, bias)
      if self.decoder.layer_norm is not None: x = layer_norm_one_pass(self.decoder.layer_norm, x)
      return self.step_logits(self.scaled_output(x))[:, 0]

  def step_logits(self, x: Tensor) -> Tensor:
    """The generator over a decode step's rows, computed for the vocabulary rounded up to a multiple of
    GENERATOR_MULTIPLE (zero rows, sliced off): a vocabulary such as 58,101 = 3 x 19,367 leaves tinygrad's kernel
    heuristics no tile wider than 3, and the padded product runs 1.5 to 1.8 times faster (docs/PERFORMANCE.md)."""
    return self.generator.padded(x, GENERATOR_MULTIPLE)

  @property
  def where(self) -> str:
    """The backend it runs on, as people read it: "CL", "CPU:LLVM", or for several devices "CPU*2 (data parallel)"."""
    one = self.target or (self.device if isinstance(self.device, str) else self.device[0])
    return one if self.parallel is None else f"{one}*{len(self.device)} ({self.parallel} parallel)"

  @property
  def dtype(self):
    """The dtype activations are computed in: the embeddings' (int8 models keep float32 embeddings)."""
    return self.src_embed.weight.dtype

  @property
  def quantized(self) -> bool:
    """Are the Linear layers int8 (quantize)?"""
    return self.generator.scale is not None

  def quantize(self) -> Transformer:
    """Make every Linear layer int8 with per-output-row scales (tfm.nn.linear.quantize_rows): the projections, the FFNs
    and the generator, which a tied model unties from its float32 embedding (the embeddings stay float32). About a
    quarter of the bytes each decode step reads; an approximation whose error `python -m benchmarks int8` measures.
    In place; returns the model. An int8 model decodes and scores, but cannot be trained."""
    if self.dtype != dtypes.float32: raise InputError(f"quantize() needs a float32 model, this one computes in {self.dtype}")
    if not self.quantized:
      for layer in linear_layers(self): layer.quantize()
    return self
