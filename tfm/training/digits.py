"""Training the Vision Transformer on scikit-learn's handwritten digits: how the bundled classifier was made.

    tfm train --task digits --steps 3000 --device CPU --out runs/digits      # needs scikit-learn: pip install 'tfm[digits]'
    tfm train --task digits --evaluate tfm/assets/digits.safetensors         # accuracy on the held-out images

The data is `sklearn.datasets.load_digits`: 1,797 greyscale 8 x 8 images (values 0..16) that ship inside scikit-learn,
so nothing is downloaded. The split is fixed, not a training setting: `np.random.default_rng(0).permutation(1797)`,
whose first 360 indices are held out (never trained on, evaluated on) and the other 1,437 are trained on
(`digits_split`); tests/fixtures/digits_test.npz holds the held-out 360 so the tests need no scikit-learn.
An image becomes the model's input as an image file does in `tfm classify`: scaled to [0, 1] (value / 16 here,
8-bit pixel / 255 there), then normalised with the config's image_mean and image_std.

Training: AdamW on the cross entropy with label smoothing, a linear warmup then a cosine decay of the learning rate,
batches drawn with replacement from the training images, each image shifted by up to one pixel (zero fill) so the model
does not learn where on the 8 x 8 grid a stroke falls; one TinyJit step does forward, backward and the update.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
from tinygrad import Context, Tensor, TinyJit, dtypes
from tinygrad.nn.optim import AdamW

from tfm.io import weights
from tfm.config import VisionConfig
from tfm.errors import InputError, TfmError
from tfm.io.images import normalise
from tfm.runtime.memory import to_device, upload
from tfm.nn.vit import VisionTransformer

HELD_OUT = 360          # images of the 1,797 kept out of training
SPLIT_SEED = 0          # the permutation that decides the split: part of the data's definition, not a training seed
DIGIT_MAX = 16.0        # load_digits' largest pixel value (ink)


@dataclass(frozen=True)
class DigitsSplit:
  """load_digits' images (N, 8, 8), values 0..16, and labels (N,), split into the training and held-out parts."""
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray


def digits_split() -> DigitsSplit:
  """The fixed train / held-out split of load_digits (module docstring); needs scikit-learn."""
  try:
    from sklearn.datasets import load_digits
  except ImportError:
    raise TfmError("the digits data comes with scikit-learn, which is not installed: pip install 'tfm[digits]' "
                   "(or pip install scikit-learn); classifying images needs no scikit-learn") from None
  digits = load_digits()
  images, labels = digits.images.astype(np.float32), digits.target.astype(np.int64)
  order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
  test, train = order[:HELD_OUT], order[HELD_OUT:]
  return DigitsSplit(images[train], labels[train], images[test], labels[test])


def digits_pixels(images: np.ndarray, config: VisionConfig) -> np.ndarray:
  """load_digits images (N, 8, 8), 0..16 -> the model's input (N, 1, 8, 8), normalised as tfm classify normalises a PNG."""
  return normalise(np.asarray(images, np.float32)[:, :, :, None] / DIGIT_MAX, config)


def shifted(images: np.ndarray, rng: np.random.Generator, most: int = 1) -> np.ndarray:
  """Each image (N, H, W) moved by up to `most` pixels along each axis, the uncovered edge filled with zeros."""
  n, h, w = images.shape
  padded = np.pad(images, ((0, 0), (most, most), (most, most)))
  dy, dx = rng.integers(0, 2 * most + 1, n), rng.integers(0, 2 * most + 1, n)
  return np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def accuracy(model: VisionTransformer, images: np.ndarray, labels: np.ndarray) -> float:
  """The share of images (N, 8, 8, values 0..16) whose top class is their label, in one batch."""
  if len(images) == 0: raise InputError("accuracy needs at least one image")
  predicted = model(digits_pixels(images, model.config)).numpy().argmax(-1)
  return float((predicted == np.asarray(labels)).mean())


@dataclass(frozen=True)
class VisionTrainOptions:
  """The settings of a digits run (defaults: the bundled classifier's, tfm/assets/README.md)."""
  steps: int = 3000
  batch_size: int = 64
  lr: float = 2e-3
  warmup: int = 200
  weight_decay: float = 0.05
  label_smoothing: float = 0.1
  seed: int = 0
  eval_every: int = 500

  def __post_init__(self):
    for name in ("steps", "batch_size", "eval_every"):
      if getattr(self, name) < 1: raise InputError(f"{name}={getattr(self, name)} must be at least 1")
    if self.warmup < 0: raise InputError(f"warmup={self.warmup} must be >= 0")
    if not self.lr > 0: raise InputError(f"lr={self.lr} must be positive")


def learning_rate(step: int, options: VisionTrainOptions) -> float:
  """Linear warmup to options.lr over the first `warmup` steps, then a cosine decay to 0 at the last step (from 1)."""
  if step <= options.warmup: return options.lr * step / max(1, options.warmup)
  progress = (step - options.warmup) / max(1, options.steps - options.warmup)
  return options.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class DigitsTrainer:
  """Trains a VisionTransformer of `config` (default: the "digits" preset) on the digits' training split."""

  def __init__(self, config: VisionConfig | str = "digits", options: VisionTrainOptions | None = None,
               device: str | None = "auto", split: DigitsSplit | None = None):
    self.config = VisionConfig.preset(config) if isinstance(config, str) else config
    c = self.config
    if (c.image_size, c.num_channels, c.num_labels) != (8, 1, 10):
      raise InputError(f"the digits are 8x8 greyscale in 10 classes; the config has image_size={c.image_size}, "
                       f"num_channels={c.num_channels}, num_labels={c.num_labels}: start from VisionConfig.preset('digits')")
    self.options = options or VisionTrainOptions()
    self.split = split or digits_split()
    Tensor.manual_seed(self.options.seed)
    self.model = VisionTransformer(self.config, device=device)
    self.rng = np.random.default_rng(self.options.seed)
    with self.model.on_device():
      self.opt = AdamW(self.model.parameters(), lr=self.options.lr, weight_decay=self.options.weight_decay)
      self.opt.lr.realize()   # a device buffer the jitted step reads; its value is written in place each step
    self.step_fn = TinyJit(self._step)
    self.step = 0

  def _step(self, pixels: Tensor, labels: Tensor) -> Tensor:
    with self.model.on_device(), Context(TRAINING=1):
      self.opt.zero_grad()
      loss = self.model.run_classifier(pixels).sparse_categorical_crossentropy(labels, label_smoothing=self.options.label_smoothing)
      loss.backward()
      Tensor.realize(loss, *self.opt.schedule_step())   # the loss of the weights this batch saw, with the update
    return loss

  def batch(self) -> tuple[Tensor, Tensor]:
    """A training batch on the device: images drawn with replacement, shifted, normalised; and their labels."""
    index = self.rng.integers(0, len(self.split.train_labels), self.options.batch_size)
    images = shifted(self.split.train_images[index], self.rng)
    return (to_device(digits_pixels(images, self.config), self.model.device),
            to_device(self.split.train_labels[index], self.model.device, dtypes.int32))

  def run(self, log=sys.stderr) -> float:
    """Train for options.steps steps, printing the loss and held-out accuracy every eval_every; returns the final
    held-out accuracy."""
    o, start, losses = self.options, time.perf_counter(), []
    while self.step < o.steps:
      self.step += 1
      upload(self.opt.lr, np.array([learning_rate(self.step, o)], np.float32))
      losses.append(self.step_fn(*self.batch()).item())   # read now: a jitted step returns the same buffer every call
      if self.step % o.eval_every == 0 or self.step == o.steps:
        mean = float(np.mean(losses))
        losses = []
        held_out = accuracy(self.model, self.split.test_images, self.split.test_labels)
        print(f"step {self.step}: loss {mean:.4f}, held-out accuracy {held_out:.4f} ({time.perf_counter() - start:.0f} s)",
              file=log, flush=True)
    return accuracy(self.model, self.split.test_images, self.split.test_labels)

  def save(self, path: str | os.PathLike) -> None:
    """The trained classifier as a tfm weight file (kind "vit", config in the metadata), written atomically."""
    weights.save(self.model, path, metadata={"trained_on": "sklearn load_digits, train split (tfm.training.digits)",
                                             "steps": str(self.step), "seed": str(self.options.seed)})
