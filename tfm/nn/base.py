"""What the Transformer and the Vision Transformer share: their state (each weight once), their initial weights drawn
on the host, the block their kernels compile in, running a public entry point on the model's backend, and casting."""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import numpy as np
from tinygrad import Tensor, dtypes
from tinygrad.helpers import TRAINING
from tinygrad.nn.state import get_state_dict

from tfm.errors import BackendError, InputError
from tfm.nn.compiled import compiled_call, compiles
from tfm.runtime.memory import like, to_device
from tfm.runtime.tuned import compiling_on


def unique_state(obj: Any) -> dict[str, Tensor]:
  """The state dict with each tensor once, under its first name (a tied matrix under `src_embed.weight`)."""
  out: dict[str, Tensor] = {}
  for name, t in get_state_dict(obj).items():
    if all(t is not seen for seen in out.values()): out[name] = t
  return out


_draws: list = [None, 0]  # [tinygrad's RNG state the count belongs to, models initialised under it]


def init_rng() -> np.random.Generator:
  """A host generator for the next model's initial weights: fixed by Tensor.manual_seed, different for each model."""
  # tinygrad-0.14: Tensor._seed and Tensor._device_rng_counters are private; manual_seed resets the counters
  if _draws[0] is not Tensor._device_rng_counters: _draws[:] = [Tensor._device_rng_counters, 0]
  _draws[1] += 1
  return np.random.default_rng([Tensor._seed, _draws[1]])


def realized_on(model: Any, compute: Callable[[], Tensor]) -> Tensor:
  """Run a model's public entry point: at inference its result is realized on the model's backend (under its
  on_device()); under training it stays lazy so that backward() can reach the weights."""
  with model.on_device():
    out = compute()
    if TRAINING: return out
    with failures_named(model): return out.realize()


@contextlib.contextmanager
def failures_named(model: Any):
  """A compiler or driver failure inside: raised as a BackendError that says which backend, the cause kept for --debug."""
  try: yield
  except (InputError, BackendError): raise
  except Exception as e:
    first = (str(e).strip().splitlines() or [""])[0][:200]
    raise BackendError(f"backend {getattr(model, 'where', model.target or model.device)} failed to run the model ({type(e).__name__}: {first}); "
                       f"`tfm backends` lists the backends that run here: pass another as device=...") from e


class Model:
  """The part of a model that is not its architecture: subclasses set `device` and `target` and say, in
  `initial_value`, how each weight starts."""
  device: Any
  target: str | None

  def on_device(self) -> contextlib.AbstractContextManager:
    """The block in which this model's kernels are built and compiled (tfm.runtime.tuned.compiling_on)."""
    return compiling_on(self.device, self.target)

  def weight_buffers(self) -> tuple[int, ...]:
    """The identity of every weight's device buffer (realizing unset ones first): a step captured over these buffers
    reads whatever is written into them, and needs capturing again once a weight tensor is replaced."""
    params = self.parameters()
    # tinygrad-0.14: uop.is_realized and uop.buffer (internal) identify the buffers a captured step reads
    if unrealized := [p for p in params if not p.uop.is_realized]: Tensor.realize(*unrealized)
    return tuple(id(p.uop.buffer) for p in params)

  def placed(self, array: np.ndarray) -> Tensor:
    """A checked input array on the model's device(s)."""
    return to_device(array, self.device)

  def forward(self, kind: str, arrays: tuple[np.ndarray, ...], compute: Callable[..., Tensor]) -> Tensor:
    """compute(*arrays placed on the device), realized: a public entry point's work. At inference on one device it runs
    as a compiled step per input shape (tfm.nn.compiled); under training it stays lazy for backward()."""
    if compiles(self):
      with failures_named(self): return compiled_call(self, kind, arrays, compute)
    return realized_on(self, lambda: compute(*(self.placed(a) for a in arrays)))

  def initial_value(self, name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    raise NotImplementedError

  def _initialise(self) -> None:
    """Every weight set to `initial_value`, drawn on the host (random kernels for every weight shape would cost
    seconds of compiling per model on each backend), following tinygrad's seed: `Tensor.manual_seed` repeats it.
    A tied matrix is initialised once, as the weight it first appears as."""
    # tinygrad-0.14: random kernels for every weight shape cost seconds of compiling: weights drawn on the host
    rng = init_rng()
    for name, p in unique_state(self).items(): p.replace(like(self.initial_value(name, p.shape, rng), p))

  @property
  def quantized(self) -> bool: return False

  def parameters(self) -> list[Tensor]:
    """Every weight once (a tied matrix once): what an optimizer updates."""
    return list(unique_state(self).values())

  def num_parameters(self) -> int:
    """Distinct learned numbers (a tied matrix counts once)."""
    return sum(p.numel() for p in self.parameters())

  def to_float(self, dtype=dtypes.float32):
    """Cast every weight in place (e.g. dtypes.float16) and return the model."""
    if self.quantized: raise InputError("to_float() cannot widen int8 weights back: load the float32 weights in the dtype wanted")
    for p in self.parameters(): p.replace(p.cast(dtype).realize())
    return self


def xavier_uniform(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
  """Glorot & Bengio's uniform initialisation of a (out, in) matrix, as nn.Transformer and ViT start theirs."""
  return rng.uniform(-1, 1, shape) * np.sqrt(6 / (shape[0] + shape[1]))
