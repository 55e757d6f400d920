"""The Vision Transformer (ViT, Dosovitskiy et al., 2021): the Transformer's encoder over image patches.

    pixels (B, C, H, W) -> patches (B, N, C*p*p) -> patch_embed -> (B, N, d)
                        -> [cls_token; patches] + position_embeddings -> dropout -> (B, N+1, d)
                        -> N x EncoderLayer (pre-norm: x + attn(LN(x)), x + ffn(LN(x))) -> LayerNorm -> (B, N+1, d)
                        -> classifier(class token) -> logits (B, num_labels)

Nothing here is a second Transformer: the layers are tfm.nn.transformer.Encoder's (tfm.nn.layers.EncoderLayer, MultiHeadAttention,
FeedForward with exact erf GELU, LayerNorm). What is the ViT's own is the input: a patch embedding (a stride=patch
Conv2d is a linear map of each flattened patch, which is how it is computed here), a learned class token and learned
position embeddings. Attribute names follow Hugging Face's ViT where they can (cls_token, position_embeddings,
classifier), so tfm.interop.vit maps a checkpoint onto them name for name.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from tinygrad import Tensor

from tfm.config import VisionConfig
from tfm.errors import InputError
from tfm.nn.linear import Linear
from tfm.runtime.memory import to_device
from tfm.nn.base import Model, xavier_uniform
from tfm.nn.transformer import Encoder
from tfm.runtime.placement import resolve_device


class VisionTransformer(Model):
  """ViT: an image as a sequence of patch tokens and a class token, through the Transformer's encoder, classified
  from the class token's final state."""

  def __init__(self, config: VisionConfig, device: str | None = None, initialise: bool = True):
    """initialise=False leaves the weights unset (empty buffers): for loaders that replace every one."""
    self.config = config
    self.device, self.target = resolve_device(device, one="a Vision Transformer")
    d = config.d_model
    with self.on_device():
      self.patch_embed = Linear(config.patch_dim, d)
      self.cls_token = Tensor.empty(1, 1, d)
      self.position_embeddings = Tensor.empty(1, config.num_patches + 1, d)
      self.encoder = Encoder(config)
      self.classifier = Linear(d, config.num_labels) if config.num_labels else None
      if initialise: self._initialise()

  @property
  def dtype(self):
    """The dtype it computes in: its weights'."""
    return self.patch_embed.weight.dtype

  def initial_value(self, name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Xavier-uniform matrices, zero biases, LayerNorms at identity, class token and positions N(0, 0.02), and a zero
    classification head (as the ViT paper starts its heads)."""
    if "layer_norm" in name: return np.ones(shape) if name.endswith(".weight") else np.zeros(shape)
    if name in ("cls_token", "position_embeddings"): return rng.normal(0.0, 0.02, shape)
    if name.startswith("classifier.") or name.endswith(".bias"): return np.zeros(shape)
    return xavier_uniform(shape, rng)

  # --- inputs -----------------------------------------------------------------------------------------------

  def check_pixels(self, pixels: Any, name: str = "pixels") -> np.ndarray:
    """pixels (B, C, H, W) checked against the config, as a float32 numpy array on the host: normalised pixel values,
    as Hugging Face's pixel_values (tfm.apps.classifier turns image files into them)."""
    c = self.config
    try:
      arr = pixels.numpy() if isinstance(pixels, Tensor) else np.asarray(pixels)
    except ValueError:  # numpy refuses ragged nesting
      raise InputError(f"{name} has images of different shapes; give (batch, {c.num_channels}, {c.image_size}, {c.image_size})") from None
    if arr.dtype == object or arr.dtype.kind not in "fiu":
      raise InputError(f"{name} must be numbers (pixel values), got dtype {arr.dtype}; convert with np.asarray(..., dtype=np.float32)")
    expected = f"(batch, {c.num_channels}, {c.image_size}, {c.image_size})"
    if arr.ndim != 4:
      hint = "; wrap a single image as pixels[None]" if arr.ndim == 3 else ""
      raise InputError(f"{name} must have shape {expected}, got shape {arr.shape}{hint}")
    if arr.shape[0] == 0: raise InputError(f"{name} is an empty batch (shape {arr.shape}): give at least one image")
    if arr.shape[1] != c.num_channels:
      raise InputError(f"{name} has {arr.shape[1]} channels, the model takes {c.num_channels} (shape {expected}); "
                       f"convert the images ({'greyscale' if c.num_channels == 1 else 'RGB'}) first")
    if arr.shape[2:] != (c.image_size, c.image_size):
      raise InputError(f"{name} images are {arr.shape[2]}x{arr.shape[3]}, the model takes {c.image_size}x{c.image_size}: "
                       f"resize them first (tfm does not interpolate position embeddings to another size)")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
      raise InputError(f"{name} has {int((~np.isfinite(arr)).sum())} NaN or Inf values; every pixel must be a finite number")
    return arr

  def pixels(self, pixels: Any, name: str = "pixels") -> Tensor:
    """Check pixels as `check_pixels` does and put them on the model's device."""
    return to_device(self.check_pixels(pixels, name), self.device)

  # --- the forward pass -------------------------------------------------------------------------------------

  def patches(self, pixels: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, N, C*p*p): each p x p patch flattened channel-major, patches in row-major order, which is
    the order in which a stride=p Conv2d's outputs are flattened."""
    b, c, h, w = pixels.shape
    p = self.config.patch_size
    x = pixels.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)   # (B, H/p, W/p, C, p, p)
    return x.reshape(b, (h // p) * (w // p), c * p * p)

  def embed(self, pixels: Tensor) -> Tensor:
    """Patch embeddings behind the class token, plus the learned position embeddings, then dropout: (B, N+1, d)."""
    x = self.patch_embed(self.patches(pixels.cast(self.patch_embed.weight.dtype)))   # (B, N, d)
    cls = self.cls_token.expand(x.shape[0], 1, self.config.d_model)
    return (cls.cat(x, dim=1) + self.position_embeddings).dropout(self.config.dropout)

  def run_encoder(self, pixels: Tensor) -> Tensor:
    """Checked pixels on the device -> the final states of every token (B, N+1, d); no mask: every token sees all."""
    with self.on_device():
      return self.encoder(self.embed(pixels))

  def run_classifier(self, pixels: Tensor) -> Tensor:
    """Checked pixels on the device -> logits (B, num_labels), from the class token's final state."""
    if self.classifier is None:
      raise InputError("this ViT has no classification head (num_labels=0, as a ViTModel checkpoint): use features()")
    with self.on_device():
      return self.classifier(self.run_encoder(pixels)[:, 0])

  def features(self, pixels: Any) -> Tensor:
    """pixels (B, C, H, W) -> every token's final state (B, N+1, d_model); the class token is row 0."""
    return self.forward("vit features", (self.check_pixels(pixels),), self.run_encoder)

  def __call__(self, pixels: Any) -> Tensor:
    """pixels (B, C, H, W) -> logits (B, num_labels)."""
    if self.classifier is None: self.run_classifier(None)   # says what to use instead
    return self.forward("vit logits", (self.check_pixels(pixels),), self.run_classifier)
