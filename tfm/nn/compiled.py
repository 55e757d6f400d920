"""A model's public forward passes at inference, compiled once per input shape and replayed.

An eager tinygrad call schedules its whole graph in Python every time: for a ViT-S/16 or base-model forward (400-550
kernels) that was 1.3-1.6 s on top of the kernels' own time (docs/PERFORMANCE.md, "Many rows on CPU"). So
`model(...)`, `model.encode(...)` and `vit.features(...)` on one device, outside training, run as a
`tfm.runtime.replay.CompiledStep` per (entry point, input shapes): captured on the first call, kept in the
compiled-program cache for the next process, launched directly after that (a CPU kernel's slices on all cores). The
inputs are written into the step's own buffers and the result is copied out, so every call returns a tensor of its
own. A model keeps its CALLS_PER_MODEL most recent shapes; replacing a weight tensor (not writing into it) makes new
ones. Training and models over several devices keep the eager path.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any, Callable

import numpy as np
from tinygrad import Tensor, dtypes
from tinygrad.helpers import TRAINING
from tinygrad.nn.state import get_state_dict

from tfm.runtime.memory import download, filled, to_device, upload
from tfm.runtime.replay import CompiledStep
from tfm.runtime.tuned import tuned_entry

CALLS_PER_MODEL = 2   # input shapes a model keeps compiled; each holds its step's activations
_CALLS: weakref.WeakKeyDictionary[Any, OrderedDict] = weakref.WeakKeyDictionary()


class CompiledCall:
  """One entry point of one model at one set of input shapes: its input and output buffers and its compiled step."""

  def __init__(self, model: Any, kind: str, arrays: tuple[np.ndarray, ...], compute: Callable[..., Tensor]):
    dev = model.device
    self.inputs = [filled(a.shape, dtypes.int32 if a.dtype.kind in "iu" else dtypes.float32, dev) for a in arrays]
    with model.on_device(): result = compute(*self.inputs)   # unrealized: its shape and dtype
    self.out = filled(tuple(result.shape), result.dtype, dev)

    def step() -> None:
      self.out.assign(compute(*self.inputs)).realize()

    def named() -> dict[str, Tensor]:
      out = {f"weight:{name}": t for name, t in get_state_dict(model).items()}
      if (positions := getattr(model, "positions", None)) is not None: out["positions"] = positions.table()
      return {**out, **{f"input{i}": t for i, t in enumerate(self.inputs)}, "output": self.out}
    key = {"step": kind, "config": model.config.to_dict(), "dtype": str(model.dtype), "int8": model.quantized, "device": dev,
           "inputs": [[list(a.shape), str(a.dtype)] for a in arrays], "tuned": tuned_entry(model.target or dev)}
    self.step = CompiledStep(step, None, model.on_device, key, named, model.target or dev)

  def __call__(self, arrays: tuple[np.ndarray, ...]) -> Tensor:
    for buffer, array in zip(self.inputs, arrays, strict=True): upload(buffer, array)
    self.step()
    return to_device(download(self.out), self.out.device, self.out.dtype)


def compiles(model: Any) -> bool:
  """Whether `model`'s forward passes run as compiled steps now: at inference, on one device."""
  return not TRAINING and isinstance(model.device, str)


def compiled_call(model: Any, kind: str, arrays: tuple[np.ndarray, ...], compute: Callable[..., Tensor]) -> Tensor:
  """compute(*arrays on the device), realized, through the model's compiled step for these shapes (module docstring)."""
  weights = model.weight_buffers()   # a replaced weight tensor needs a new capture
  calls = _CALLS.setdefault(model, OrderedDict())
  key = (kind, tuple((a.shape, a.dtype.kind) for a in arrays), weights)
  if key not in calls:
    calls[key] = CompiledCall(model, kind, arrays, compute)
    while len(calls) > CALLS_PER_MODEL: calls.popitem(last=False)
  calls.move_to_end(key)
  return calls[key](arrays)
