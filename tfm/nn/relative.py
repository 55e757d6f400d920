"""Relative position biases (T5's): instead of positions added to the embeddings, each head adds a learned number to
the score of query i for key j, looked up by the bucket of the distance j - i. Near distances get a bucket each, far
ones share logarithmically wider buckets up to max_distance; the encoder's buckets tell left from right
(bidirectional), the decoder's look only back. One table per stack, shared by all its layers."""
from __future__ import annotations

import functools

import numpy as np
from tinygrad import Tensor, dtypes

from tfm.config import TransformerConfig
from tfm.runtime.memory import to_device


def relative_buckets(distance: np.ndarray, bidirectional: bool, buckets: int, max_distance: int) -> np.ndarray:
  """The bucket of each key-minus-query distance (ints), in float32 arithmetic as the checkpoints were trained with it:
  half the buckets (of each direction) exact, the rest logarithmic up to max_distance, the last one beyond."""
  distance = np.asarray(distance, np.int64)
  out = np.zeros(distance.shape, np.int64)
  if bidirectional:
    buckets //= 2
    out += (distance > 0) * buckets
    distance = np.abs(distance)
  else:
    distance = -np.minimum(distance, 0)
  exact = buckets // 2
  with np.errstate(divide="ignore"):   # log(0) where the distance is exact anyway
    far = np.log(distance.astype(np.float32) / np.float32(exact)) / np.float32(np.log(max_distance / exact)) * np.float32(buckets - exact)
  far = np.minimum(exact + np.nan_to_num(far, neginf=0).astype(np.int64), buckets - 1)
  return out + np.where(distance < exact, distance, far)


@functools.cache
def _table_on(length: int, bidirectional: bool, buckets: int, max_distance: int, device: str) -> Tensor:
  """Buckets of the distances -(length - 1) .. length - 1 (index d + length - 1), on the device, once per process."""
  table = relative_buckets(np.arange(-(length - 1), length), bidirectional, buckets, max_distance)
  return to_device(table.astype(np.int32), device, dtypes.int32)


class RelativeBias:
  """One stack's relative position bias: `weight` (buckets, n_heads), looked up per query and key."""

  def __init__(self, config: TransformerConfig, bidirectional: bool):
    self.weight = Tensor.empty(config.relative_buckets, config.n_heads)
    self.bidirectional, self.max_len = bidirectional, config.max_len
    self.buckets, self.max_distance = config.relative_buckets, config.relative_max_distance

  def _bias(self, bucket: Tensor) -> Tensor:
    """Buckets (Tq, Tk) -> the heads' biases (1, H, Tq, Tk)."""
    one_hot = (bucket.unsqueeze(-1) == Tensor.arange(self.buckets)).cast(self.weight.dtype)
    return (one_hot @ self.weight).permute(2, 0, 1).unsqueeze(0)

  def full(self, queries: int, keys: int) -> Tensor:
    """Queries 0..queries-1 against keys 0..keys-1: (1, H, queries, keys)."""
    distance = np.arange(keys)[None, :] - np.arange(queries)[:, None]
    bucket = relative_buckets(distance, self.bidirectional, self.buckets, self.max_distance).astype(np.int32)
    return self._bias(to_device(bucket, self.weight.device, dtypes.int32))

  def row(self, pos, keys: int) -> Tensor:
    """The query at position pos (an int or a bound Variable) against keys 0..keys-1: (1, H, 1, keys), a slice of the
    distance table (key k is at distance k - pos, index k - pos + max_len - 1)."""
    table = _table_on(self.max_len, self.bidirectional, self.buckets, self.max_distance, self.weight.device)
    start = self.max_len - 1 - pos
    return self._bias(table[start:start + keys].reshape(1, keys))
