"""Whisper's audio front end: the encoder's input is a log-mel spectrogram (tfm.io.audio.log_mel), not token ids. Two
convolutions over time (kernel 3, padding 1; the second of stride 2, halving the frames) each followed by gelu turn
(batch, n_mels, frames) into (batch, frames / 2, d_model): one token per 20 ms, to which the encoder's positions add."""
from __future__ import annotations

from typing import Any

import numpy as np
from tinygrad import Tensor, nn

from tfm.config import TransformerConfig
from tfm.errors import InputError
from tfm.nn.linear import product


class ConvFrontEnd:
  """conv1 (n_mels -> d_model) and conv2 (d_model -> d_model, stride 2), each with gelu (the exact erf form).

  Each convolution is one product (tfm.nn.linear.product): the three taps of every output frame side by side,
  (B, frames, channels x 3), times the kernel as a (out, channels x 3) matrix, which on CPU is tfm's GEMM. tinygrad's
  own conv1d took 5 times as long at whisper-base's shape (docs/PERFORMANCE.md, "Whisper"). The weights keep
  nn.Conv1d's layout (out, channels, 3), as checkpoints store them."""

  def __init__(self, config: TransformerConfig):
    d = config.d_model
    self.conv1 = nn.Conv1d(config.n_mels, d, 3, padding=1)
    self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)

  def __call__(self, features: Tensor) -> Tensor:
    x = conv_frames(features.permute(0, 2, 1), self.conv1, 1).gelu(approximate="none")
    return conv_frames(x, self.conv2, 2).gelu(approximate="none")


def conv_frames(x: Tensor, conv: nn.Conv2d, stride: int) -> Tensor:   # tinygrad's nn.Conv1d makes a Conv2d
  """A kernel-3, padding-1 convolution over time of frames x (B, T, C) -> (B, (T - 1) // stride + 1, out):
  out[b, t, o] = bias[o] + sum over c, j of w[o, c, j] x[b, stride t + j - 1, c]."""
  b, t, c = x.shape
  frames = (t - 1) // stride + 1
  padded = x.pad(((0, 0), (1, 1), (0, 0)))
  taps = [padded[:, j:j + stride * (frames - 1) + 1:stride] for j in range(3)]   # (B, frames, C) each
  cols = Tensor.stack(*taps, dim=-1).reshape(b, frames, c * 3)   # column c * 3 + j, as w.reshape(out, C * 3) reads it
  return product(cols, conv.weight.reshape(conv.weight.shape[0], c * 3)) + conv.bias


def check_features(features: Any, config: TransformerConfig, name: str = "features") -> np.ndarray:
  """Log-mel features (batch, n_mels, 2 x max_source_len) as a float32 numpy array, or an InputError naming the shape the
  model takes and how to make it (tfm.io.audio.log_mel pads or cuts audio to 30 s)."""
  try:
    arr = features.numpy() if isinstance(features, Tensor) else np.asarray(features)
  except ValueError:
    raise InputError(f"{name} has rows of different shapes; give one array (batch, n_mels, frames)") from None
  frames = 2 * config.source_positions
  if arr.dtype.kind != "f" or arr.ndim != 3 or arr.shape[1:] != (config.n_mels, frames) or arr.shape[0] == 0:
    got = f"dtype {arr.dtype}, shape {arr.shape}"
    raise InputError(f"{name} must be log-mel features of shape (batch, {config.n_mels}, {frames}), floats; got {got}: "
                     f"make them with tfm.io.audio.log_mel(tfm.io.audio.read_audio(path), n_mels={config.n_mels})")
  if not np.isfinite(arr).all(): raise InputError(f"{name} has NaN or Inf values; compute the features again")
  return arr.astype(np.float32)
