"""Where a Vision Transformer's class token looks: attention rollout over its layers, drawn over the image.

    att = image_attention(tfm.Classifier.bundled(), "digit.png")
    att.weights              # (layers, heads, tokens, tokens): each layer's softmax(Q K^T / sqrt(d_k)); rows sum to 1
    att.rollout              # (tokens, tokens): rollout over every layer; rows sum to 1; token 0 is the class token
    att.class_map            # (grid, grid): the class token's row over the patches
    plot(att, "map.png")     # the image, and the map over it (needs matplotlib)

Attention rollout (Abnar and Zuidema, 2020): a layer mixes its input by its attention averaged over heads, and its
residual connection carries the input on as well, so each layer is taken as 0.5 A + 0.5 I, and the layers are
multiplied from the first up: rollout = (0.5 A_L + 0.5 I) ... (0.5 A_1 + 0.5 I). Row 0 is how much of each input token
(the class token itself, then every patch) reached the class token that the classifier reads. The weights come from
the model's own modules: each encoder layer's self_attn also hands back its attention weights (tfm.nn.attention).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from tinygrad import Tensor

from tfm.io import images as imaging
from tfm.apps.attention_map import figure_class, recording
from tfm.apps.classifier import Classifier, Prediction
from tfm.errors import InputError
from tfm.files import atomic_write
from tfm.nn.vit import VisionTransformer


@dataclass(frozen=True)
class ImageAttention:
  """The self-attention of one image through a ViT, and its rollout."""
  name: str                 # the image's path, or "image"
  image: np.ndarray         # (H, W, C) in [0, 1]: the image as the model saw it (converted, resized), before normalising
  weights: np.ndarray       # (layers, heads, T, T) float32, T = 1 + patches
  prediction: Prediction    # the model's top class

  @property
  def rollout(self) -> np.ndarray: return rollout(self.weights)

  @property
  def class_map(self) -> np.ndarray:
    """(grid, grid): the rollout's class-token row over the patches, in the image's layout (row-major patches)."""
    row = self.rollout[0, 1:]
    grid = int(round(len(row) ** 0.5))
    return row.reshape(grid, grid)


def rollout(weights: np.ndarray) -> np.ndarray:
  """(layers, heads, T, T) attention weights -> (T, T) attention rollout (module docstring), in float64."""
  w = np.asarray(weights, np.float64)
  if w.ndim != 4 or w.shape[2] != w.shape[3]:
    raise InputError(f"weights must be (layers, heads, tokens, tokens), got shape {w.shape}")
  eye = np.eye(w.shape[2])
  out = eye
  for layer in w:
    mixed = 0.5 * layer.mean(0) + 0.5 * eye
    out = (mixed / mixed.sum(-1, keepdims=True)) @ out
  return out


def attention_of(model: VisionTransformer, pixels: Any) -> np.ndarray:
  """Self-attention weights (layers, heads, T, T) of one image: pixels (1, C, H, W) as the model takes them."""
  x = model.pixels(pixels)
  if x.shape[0] != 1: raise InputError(f"attention_of takes one image, got a batch of {x.shape[0]}; pass pixels[:1]")
  with recording(model.encoder.layers, "self_attn") as recorders, model.on_device():
    model.run_encoder(x)
    stacked = Tensor.stack(*[rec.weights[0] for rec in recorders]).realize()   # (layers, H, T, T)
  return stacked.numpy().astype(np.float32)


def image_attention(classifier: Classifier, image: Any, resize: bool = False) -> ImageAttention:
  """One image (a path or an array, as Classifier takes them) -> its attention through every layer and its top class."""
  name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else "image"
  seen = imaging.prepare(image, classifier.config, resize, name)
  pixels = imaging.normalise(seen[None], classifier.config)
  weights = attention_of(classifier.model, pixels)
  (best,) = classifier.classify([seen], top_k=1)[0]
  return ImageAttention(name, seen, weights, best)


def plot(att: ImageAttention, path: str | os.PathLike) -> str:
  """Write a PNG: the image as the model saw it, then the class token's rollout over it; returns the path written."""
  Figure = figure_class()
  path = os.fspath(path)
  if not path.lower().endswith(".png"): raise InputError(f"{path}: the attention map is written as PNG; give a path ending in .png")
  size = att.image.shape[0]
  shown = att.image[:, :, 0] if att.image.shape[2] == 1 else att.image
  cmap = "gray" if att.image.shape[2] == 1 else None
  heat = np.kron(att.class_map, np.ones((size // att.class_map.shape[0],) * 2))   # each patch's share over its pixels
  fig = Figure(figsize=(8.0, 4.4), layout="constrained")
  left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
  left.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
  left.set_title(f"{os.path.basename(att.name)}: {att.prediction.label} ({att.prediction.probability:.1%})")
  right.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
  overlay = right.imshow(heat, cmap="inferno", alpha=0.6, interpolation="nearest")
  right.set_title(f"class token's attention rollout over {att.weights.shape[0]} layers")
  fig.colorbar(overlay, ax=right, label="share of the class token", shrink=0.8)
  for ax in (left, right): ax.set_xticks([]); ax.set_yticks([])
  atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
  return path
