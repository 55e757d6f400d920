"""Batches for many texts: sorted by length so a batch pads little, bounded in examples or in tokens so memory stays
bounded however long the list is, and rounded to a few row counts so the compiled steps are reused.

A batch of `rows` texts whose longest has `n` tokens costs rows x n positions of memory and work: batch_type
"examples" bounds rows, "tokens" bounds rows x n (the padded size, which is what the device holds). Every distinct
(rows, source bucket) shape compiles its own steps, so a batch's row count is rounded up to a power of two (never
past the bound), the extra rows repeating its first text, whose outputs are dropped.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from tfm.errors import InputError

BATCH_TYPES = ("examples", "tokens")


def check_bound(max_batch_size: int, batch_type: str) -> None:
  if batch_type not in BATCH_TYPES:
    raise InputError(f"batch_type={batch_type!r} is not one of {', '.join(BATCH_TYPES)}: 'examples' bounds the texts "
                     f"per batch, 'tokens' their padded token count")
  if not isinstance(max_batch_size, int) or isinstance(max_batch_size, bool) or max_batch_size < 1:
    raise InputError(f"max_batch_size={max_batch_size!r} must be a positive integer")


def plan(lengths: Sequence[int], max_batch_size: int, batch_type: str = "examples") -> list[list[int]]:
  """The indices of texts of these token lengths, grouped into batches: by length (stable, so equal lengths keep
  their order), each batch within the bound. A text longer than a "tokens" bound goes in a batch of its own."""
  check_bound(max_batch_size, batch_type)
  order = sorted(range(len(lengths)), key=lambda i: lengths[i])
  batches: list[list[int]] = []
  for i in order:
    if batches:
      last = batches[-1]
      size = len(last) + 1 if batch_type == "examples" else (len(last) + 1) * lengths[i]   # i is the longest so far
      if size <= max_batch_size:
        last.append(i)
        continue
    batches.append([i])
  return batches


def padded_rows(rows: int, max_rows: int) -> int:
  """The row count a batch of `rows` texts runs with: the next power of two, but never more than max_rows (or rows)."""
  return max(rows, min(1 << (rows - 1).bit_length(), max_rows))


def padded(ids: Sequence[Sequence[int]], pad_id: int, rows: int | None = None, width: int | None = None) -> np.ndarray:
  """Token id lists as one int32 matrix (rows, width), each row right-padded with pad_id (defaults: one row per list,
  the longest list's width); rows past the lists repeat the first one (their outputs are dropped)."""
  src = np.full((rows or len(ids), width or max(map(len, ids))), pad_id, np.int32)
  for i, row in enumerate(ids): src[i, :len(row)] = row
  src[len(ids):] = src[0]
  return src
