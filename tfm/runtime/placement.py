"""Where a model runs: its device or devices (chosen by `backends.select`: "CL", "CPU*2"), and over several devices how
its weights and batches are split.

Two modes, tinygrad's multi-device tensors underneath (`Tensor.shard`: one buffer per device, whole or a slice):

- data parallel ("data"): every weight on every device; a batch is split by rows, each device runs its rows. No
  traffic between devices in a forward pass; a training step's gradients are summed over them (an all-reduce).
- tensor parallel ("tensor"), as Megatron-LM splits a layer: q, k, v projections and fc1 by output features
  (column-parallel: each device holds whole attention heads and a slice of the FFN), out_proj and fc2 by input
  features (row-parallel: each device's partial products are summed, one all-reduce per sublayer). Embeddings,
  LayerNorms and the generator are replicated. Each device holds about 1/n of the layers' weights.

A batch whose rows do not split evenly runs whole on every device (replicated): same numbers, no speed-up.
The default mode is data parallel, unless the float32 weights exceed TENSOR_PARALLEL_BYTES: then the devices may not
hold them whole, and tensor parallel splits them.
"""
from __future__ import annotations

import os
from typing import Any

from tinygrad import Device, Tensor

import backends
from tfm.config import TransformerConfig
from tfm.errors import InputError

DATA, TENSOR = "data", "tensor"
MODES = (DATA, TENSOR)
TENSOR_PARALLEL_BYTES = 2 << 30

# tensor parallel: by output features (their biases and int8 row scales with them), or by input features
COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "fc1", "gate")   # gate: the gated FFN's second input projection (T5 v1.1)
ROW_PARALLEL = ("out_proj", "fc2")


def resolve_device(device: Any, one: str | None = None) -> tuple[str | tuple[str, ...], str | None]:
  """(tensor device, tinygrad DEV target) for a device argument: None is tinygrad's default device, as it is;
  anything else ("auto", "CL", "CPU:LLVM", ["CUDA", "CL"]) is chosen and probed by the backend layer. Several
  devices ("CPU*2", ("CPU:0", "CPU:1")) give a tuple of tinygrad device names, unless `one` names a model that runs
  on one device only: then they are refused."""
  if device is None: return Device.DEFAULT, None
  info = backends.select(device)
  if one is not None and len(info.devices) > 1:
    given = f"TFM_DEVICE={os.environ.get('TFM_DEVICE')!r}" if device == "auto" else f"device={device!r}"
    raise InputError(f"{one} runs on one device, and {given} names {len(info.devices)}; give one of them "
                     f"(e.g. device={info.devices[0]!r}): several devices are for the translation Transformer")
  return info.tensor_device, info.target


def choose(parallel: str | None, config: TransformerConfig, device: str | tuple[str, ...]) -> str | None:
  """The mode for a model of config on device: None on one device; `parallel` checked, or the default by size."""
  if isinstance(device, str):
    if parallel is not None:
      raise InputError(f"parallel={parallel!r} needs several devices, and device is {device}; "
                       f"give device='{device.split(':')[0]}*2' (or a tuple of devices), or leave parallel unset")
    return None
  if parallel is None:
    d, ff = config.d_model, config.d_ff
    weights = 4 * (d * config.vocab_size * (1 if config.tie_embeddings else 3)
                   + config.n_encoder_layers * (4 * d * d + 2 * d * ff) + config.n_decoder_layers * (8 * d * d + 2 * d * ff))
    parallel = TENSOR if weights > TENSOR_PARALLEL_BYTES else DATA
  if parallel not in MODES:
    raise InputError(f"parallel={parallel!r} is not a mode: choose 'data' (batches split over the devices) or 'tensor' "
                     f"(attention heads and FFN columns split), or None for the default")
  n = len(device)
  if parallel == TENSOR and (config.n_heads % n or config.d_ff % n):
    field, value = ("n_heads", config.n_heads) if config.n_heads % n else ("d_ff", config.d_ff)
    raise InputError(f"tensor parallel over {n} devices splits {field}={value}, which does not divide by {n}; "
                     f"use a device count that divides it, or parallel='data'")
  return parallel


def weight_axis(name: str, parallel: str | None) -> int | None:
  """The axis a weight (by its state-dict name) is split along, None for replicated."""
  if parallel != TENSOR: return None
  layer, _, kind = name.rpartition(".")
  layer = layer.rpartition(".")[2]
  if layer in COLUMN_PARALLEL: return 0
  return 1 if layer in ROW_PARALLEL and kind == "weight" else None


def place(model: Any, state: dict[str, Tensor]) -> None:
  """Lay out every weight of `state` (a model's unique state dict) over model.device as model.parallel splits it,
  unset: the model's initialisation or a loader fills them (tfm.runtime.memory.like keeps each one's layout)."""
  devices = model.device
  for name, t in state.items():
    axis = weight_axis(name, model.parallel)
    if axis is None: t.replace(Tensor.empty(*t.shape, dtype=t.dtype, device=devices))
    else:
      shard = tuple(n // len(devices) if i == axis else n for i, n in enumerate(t.shape))
      # tinygrad-0.14: uop.unshard(axis) (internal) lays out an unset sharded weight without a shard kernel
      t.replace(Tensor(Tensor.empty(*shard, dtype=t.dtype, device=devices).uop.unshard(axis)))


def batch_axis(model: Any, rows: int) -> int | None:
  """0 when a batch of `rows` rows is split over a data-parallel model's devices, else None (replicated)."""
  return 0 if model.parallel == DATA and rows % len(model.device) == 0 else None
