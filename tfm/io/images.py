"""Images as a Vision Transformer takes them: read from an image file (PNG, JPEG, ... through Pillow) or a .npy array,
converted to the model's channels, resized when asked, normalised with the model's image_mean and image_std.

An image is (H, W) or (H, W, C) with values in [0, 1] (8-bit files and uint8 arrays are divided by 255); C is 1, 3 or
4 (the alpha channel is dropped). A colour image for a greyscale model becomes its luma (0.299 R + 0.587 G + 0.114 B,
as Pillow's "L" mode); a greyscale image for an RGB model has its one channel repeated. Another size than the model's
is an error unless `resize` is given (bilinear, through Pillow): a 28 x 28 digit squeezed into 8 x 8 pixels is a choice
the caller makes, not one made silently.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from tfm.config import VisionConfig
from tfm.errors import InputError, TfmError

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _pillow():
  try:
    from PIL import Image, UnidentifiedImageError
  except ImportError:
    raise TfmError("reading image files needs Pillow, which is not installed: pip install pillow (or pass .npy arrays)") from None
  return Image, UnidentifiedImageError


def read_image(path: str | os.PathLike, channels: int) -> np.ndarray:
  """An image file or a .npy array -> (H, W, channels) float32 in [0, 1]."""
  path = os.fspath(path)
  if not os.path.exists(path): raise InputError(f"image {path} does not exist; check the path")
  if os.path.isdir(path): raise InputError(f"image {path} is a directory; give an image file (PNG, JPEG, ...) or a .npy array")
  if os.path.getsize(path) == 0: raise InputError(f"image {path} is empty (0 bytes); give an image file or a .npy array")
  if path.lower().endswith(".npy"):
    try:
      array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
      raise InputError(f"{path} is not a readable .npy array ({e}); write it with np.save") from None
    return to_channels(as_image(array, path), channels, path)
  Image, UnidentifiedImageError = _pillow()
  try:
    with Image.open(path) as img:
      img.load()
      converted = img.convert("L" if channels == 1 else "RGB")   # palettes, alpha, CMYK, 1-bit: Pillow's conversions
  except UnidentifiedImageError:
    raise InputError(f"{path} is not an image Pillow can read (PNG, JPEG, BMP, GIF, TIFF, WebP, ...) nor a .npy array") from None
  except (OSError, ValueError) as e:   # a truncated or damaged file
    raise InputError(f"{path} could not be read as an image ({e}); the file is damaged or truncated") from None
  pixels = np.asarray(converted, dtype=np.float32) / 255.0
  return pixels[:, :, None] if pixels.ndim == 2 else pixels


def as_image(array: Any, name: str = "image") -> np.ndarray:
  """An array (H, W) or (H, W, C) checked and scaled to float32 in [0, 1]: uint8 is divided by 255, floats must be in
  [0, 1] already; C = 4 drops the alpha channel."""
  a = np.asarray(array)
  if a.size == 0: raise InputError(f"{name} is empty (shape {a.shape}); give an image (height, width) or (height, width, channels)")
  if a.ndim == 2: a = a[:, :, None]
  if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
    raise InputError(f"{name} has shape {a.shape}; an image is (height, width) or (height, width, channels) with 1, 3 or 4 "
                     f"channels, channels last")
  if a.dtype == np.uint8: a = a.astype(np.float32) / 255.0
  elif a.dtype.kind == "f":
    a = a.astype(np.float32)
    if not np.isfinite(a).all(): raise InputError(f"{name} has {int((~np.isfinite(a)).sum())} NaN or Inf pixels; every pixel must be finite")
    if a.min() < 0 or a.max() > 1:
      raise InputError(f"{name} has float pixels in [{a.min():g}, {a.max():g}]; float images must be in [0, 1] "
                       f"(or give uint8 pixels 0..255)")
  else:
    raise InputError(f"{name} has dtype {a.dtype}; give uint8 pixels (0..255) or floats in [0, 1]")
  return a[:, :, :3] if a.shape[2] == 4 else a


def to_channels(image: np.ndarray, channels: int, name: str = "image") -> np.ndarray:
  """(H, W, C) -> (H, W, channels): colour to luma for a greyscale model, greyscale repeated for an RGB one."""
  c = image.shape[2]
  if c == channels: return image
  if channels == 1 and c == 3: return (image @ LUMA)[:, :, None]
  if channels == 3 and c == 1: return np.repeat(image, 3, axis=2)
  raise InputError(f"{name} has {c} channels; the model takes {channels} and tfm converts only between 1 (greyscale) and 3 (RGB)")


def resized(image: np.ndarray, size: int) -> np.ndarray:
  """(H, W, C) -> (size, size, C), bilinear, each channel through Pillow's float ("F") images."""
  Image, _ = _pillow()
  channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, i])).resize((size, size), Image.Resampling.BILINEAR))
              for i in range(image.shape[2])]
  return np.clip(np.stack(channels, axis=2), 0.0, 1.0).astype(np.float32)


def prepare(image: Any, config: VisionConfig, resize: bool = False, name: str = "image") -> np.ndarray:
  """A path or an array -> (H, W, C) in [0, 1] at the model's size and channels: what the model will see."""
  if isinstance(image, (str, os.PathLike)):
    name, image = os.fspath(image), read_image(image, config.num_channels)
  else:
    image = to_channels(as_image(image, name), config.num_channels, name)
  h, w, _ = image.shape
  s = config.image_size
  if (h, w) != (s, s):
    if not resize:
      raise InputError(f"{name} is {w}x{h} pixels, the model takes {s}x{s}: resize it first, or ask tfm to "
                       f"(tfm classify --resize, resize=True)")
    image = resized(image, s)
  return image


def normalise(images: np.ndarray, config: VisionConfig) -> np.ndarray:
  """(B, H, W, C) in [0, 1] -> the model's pixels (B, C, H, W): (x - image_mean) / image_std per channel."""
  x = (np.asarray(images, np.float32) - np.asarray(config.image_mean, np.float32)) / np.asarray(config.image_std, np.float32)
  return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
