"""Classifier: images in, labels with probabilities out, with a VisionTransformer and the preprocessing its config says.

    clf = tfm.Classifier.bundled()                       # the digits classifier that ships with tfm (8 x 8 greyscale)
    clf.classify(["digit.png"], top_k=3)                 # [[Prediction('3', 3, 0.98), Prediction('8', 8, 0.01), ...]]
    clf = tfm.Classifier.load("vit-checkpoint/")         # a Hugging Face ViT folder, or a tfm .safetensors of kind vit
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tfm.io import images as imaging
from tfm.errors import InputError, WeightsError
from tfm.files import BUNDLED_CLASSIFIER
from tfm.runtime.placement import resolve_device
from tfm.nn.vit import VisionTransformer



@dataclass(frozen=True)
class Prediction:
  """One class of one image: its name, its index among the model's classes, and the model's probability for it."""
  label: str
  index: int
  probability: float


class Classifier:
  """A VisionTransformer with a classification head and its preprocessing: image files or arrays -> top-k classes.
  `device` runs the model there (a copy of it when it lives elsewhere); None keeps it where it is."""

  def __init__(self, model: VisionTransformer, device: str | None = None):
    if not isinstance(model, VisionTransformer):
      raise InputError(f"model must be a tfm.VisionTransformer, got {type(model).__name__}")
    if model.classifier is None:
      raise InputError("the model has no classification head (num_labels=0, a ViTModel checkpoint): it cannot classify")
    if device is not None and resolve_device(device)[0] != model.device:
      from tfm.io.weights import copy_to
      model = copy_to(model, device)
    self.model = model

  @property
  def config(self): return self.model.config

  def pixels(self, images: Sequence[Any], resize: bool = False) -> np.ndarray:
    """Paths or arrays -> the model's input (B, C, H, W), each converted as tfm.io.images.prepare says."""
    if isinstance(images, (str, os.PathLike, np.ndarray)):
      raise InputError("give a list of images (paths or arrays); wrap a single one as [image]")
    images = list(images)
    if not images: raise InputError("no images given: pass at least one path or array")
    prepared = [imaging.prepare(image, self.config, resize, name=f"image {i}") for i, image in enumerate(images)]
    return imaging.normalise(np.stack(prepared), self.config)

  def probabilities(self, images: Sequence[Any], resize: bool = False) -> np.ndarray:
    """(B, num_labels): the softmax of the model's logits for each image."""
    logits = self.model(self.pixels(images, resize)).numpy().astype(np.float64)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  def classify(self, images: Sequence[Any], top_k: int = 5, resize: bool = False) -> list[list[Prediction]]:
    """The top_k most probable classes of each image, most probable first."""
    if not isinstance(top_k, int) or top_k < 1: raise InputError(f"top_k={top_k!r} must be a positive integer")
    probs = self.probabilities(images, resize)
    k = min(top_k, probs.shape[1])
    return [[Prediction(self.config.label(int(i)), int(i), float(row[i])) for i in np.argsort(-row, kind="stable")[:k]]
            for row in probs]

  @classmethod
  def load(cls, path: str | os.PathLike, device: str | None = None) -> Classifier:
    """A Hugging Face ViT checkpoint folder, or a tfm weight file of kind "vit" (as `tfm train --task digits` writes)."""
    from tfm.interop.vit import from_pretrained
    from tfm.io.weights import load
    path = os.fspath(path)
    if os.path.isdir(path): return cls(from_pretrained(path, device=device))
    if not os.path.isfile(path):
      raise WeightsError(f"{path} does not exist; give a ViT checkpoint folder or a .safetensors file written by tfm")
    model = load(path, device=device)
    if not isinstance(model, VisionTransformer):
      raise WeightsError(f"{path} holds a {type(model).__name__}, not an image classifier; give a file of kind vit")
    return cls(model)

  @classmethod
  def bundled(cls, device: str | None = None) -> Classifier:
    """The digits classifier that ships with tfm (tfm/assets/digits.safetensors; tfm/assets/README.md)."""
    if not os.path.isfile(BUNDLED_CLASSIFIER):
      raise WeightsError(f"the bundled classifier is missing from this installation ({BUNDLED_CLASSIFIER}); train it with "
                         f"`tfm train --task digits --out runs/digits` and copy runs/digits/model.safetensors there, or pass --model PATH")
    return cls.load(BUNDLED_CLASSIFIER, device)

  @classmethod
  def open(cls, model: str | os.PathLike, device: str | None = None) -> Classifier:
    """`model` as the command line names it: "bundled" (the digits classifier that ships with tfm), else a path for `load`."""
    return cls.bundled(device) if model == "bundled" else cls.load(model, device)
