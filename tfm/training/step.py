"""One training step: the label-smoothed loss (paper 5.4), tinygrad's Adam over one flat gradient buffer, and the
step that runs both as one compiled step (what tfm.training.trainer.Trainer runs and the train benchmark times)."""
from __future__ import annotations

import numpy as np
from tinygrad import Context, Tensor, dtypes
from tinygrad.helpers import TRAINING, unwrap
from tinygrad.nn.optim import LAMB
from tinygrad.nn.state import get_state_dict

from tfm.errors import InputError
from tfm.runtime.memory import download, filled, upload
from tfm.nn.transformer import Transformer
from tfm.runtime.placement import batch_axis
from tfm.runtime.replay import CompiledStep
from tfm.runtime.tuned import tuned_entry


def loss(model: Transformer, src: Tensor, tgt_in: Tensor, labels: Tensor, label_smoothing: float = 0.1) -> Tensor:
  """5.4 label-smoothed cross entropy of the teacher-forced logits, averaged over the real (non-pad) target tokens."""
  logits = model.run_decoder(tgt_in, model.run_encoder(src), model.padding_mask(src))
  return logits.sparse_categorical_crossentropy(labels, ignore_index=model.config.pad_id, label_smoothing=label_smoothing)


class FlatAdam(LAMB):
  """tinygrad's fused Adam (LAMB with adam=True and no weight decay: the same update, moments, and bias correction),
  with the gradients gathered into one flat buffer by writing each into its slice.

  tinygrad's fused optimizer concatenates the gradients with `Tensor.cat`, which compiles to one kernel that tests
  every element against every parameter's range; written slice by slice, each gradient's last kernel stores straight
  into the buffer and the update reads it as one array (what that saves: docs/PERFORMANCE.md). The moments stay two
  flat buffers, `m[0]` and `v[0]`, as in the fused optimizer, with parameter i at `pos_params[i]:pos_params[i + 1]`.

  clip_norm: the gradients are scaled by min(1, clip_norm / their global L2 norm) before the update, the norm taken
  in one reduction over the flat buffer (per tensor, each reduction recomputed its gradient's last kernel: the
  clipped step took twice as long)."""

  def __init__(self, params: list[Tensor], lr: float = 0.001, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
               clip_norm: float | None = None):
    super().__init__(params, lr, b1, b2, eps, weight_decay=0.0, adam=True, fused=True)
    self.clip_norm = clip_norm
    # tinygrad-0.14: the optimizer's state is lazy zeros and ones, realized by the first step, which a compiled step's
    # capture must not contain: here realized buffers, written without kernels
    dev, n = self.device, self.pos_params[-1]
    self.m, self.v = [filled((n,), self.param_dtype, dev)], [filled((n,), self.param_dtype, dev)]
    self.b1_t, self.b2_t = filled((1,), dtypes.float32, dev, 1.0), filled((1,), dtypes.float32, dev, 1.0)
    self.lr = filled((1,), self.lr.dtype, dev, lr)

  def set_lr(self, lr: float) -> None:
    """The learning rate of the next step, written into the buffer the compiled step reads."""
    upload(self.lr, np.array([lr]))

  def schedule_step(self) -> list[Tensor]:
    if not TRAINING: raise RuntimeError("FlatAdam.schedule_step needs Context(TRAINING=1), as tinygrad's optimizers do")
    # tinygrad-0.14: Optimizer.schedule_step redone over LAMB's internals (pos_params, _step, _apply_update, buffers)
    pos = self.pos_params
    grads = Tensor.empty(pos[-1], dtype=self.param_dtype, device=self.device)
    # tinygrad-0.14: the fused optimizer's Tensor.cat compiles to one kernel testing every element against every range
    for i, p in enumerate(self.params): grads[pos[i]:pos[i + 1]].assign(unwrap(p.grad).flatten().cast(self.param_dtype))
    if self.clip_norm is not None:
      grads = grads * (self.clip_norm / (grads.float().square().sum().sqrt() + 1e-6)).minimum(1.0).cast(grads.dtype)
    # the parameters only enter Adam's update through weight decay, which is 0: the flat update needs the gradients alone
    (update,), extra = self._step([grads], [grads])
    for i, p in enumerate(self.params): p.assign(self._apply_update(p, update[pos[i]:pos[i + 1]].reshape(p.shape).cast(p.dtype)))
    return extra + self.params + self.buffers


class TrainStep:
  """One optimizer step on a batch, compiled once: the label-smoothed loss, backward, the FlatAdam update (with its
  gradient clipping). Called with host arrays (src, decoder input, labels) of the shapes it was built for, it returns
  the loss of the weights the batch saw. The Trainer's step, and the one the train benchmark times.

  It is a CompiledStep (tfm.runtime.replay): captured on its first call and kept in the compiled-program cache, so another
  trainer of the same model and batch shape (a resumed run, the next process) launches it without scheduling anything.
  The step touches only buffers it names: the weights, Adam's state and learning rate, tinygrad's RNG state (dropout),
  the batch and the loss."""

  def __init__(self, model: Transformer, opt: FlatAdam, label_smoothing: float, shapes: tuple[tuple[int, int], ...]):
    self.model, self.opt, self.label_smoothing = model, opt, label_smoothing
    dev, c = model.device, model.config
    if model.parallel == "tensor":
      raise InputError("a tensor-parallel model cannot be trained: training splits the batch over the devices (data "
                       "parallel); build the model with parallel='data' (tfm.Trainer does)")
    if model.parallel is not None and c.dropout > 0:
      # tinygrad-0.14: (measured) replays of a step over several devices leave their RNG counters where the first
      # step put them, so every later step would draw the first step's dropout masks again
      raise InputError(f"training on several devices ({'+'.join(dev)}) needs dropout=0 (the config has {c.dropout}): tinygrad "
                       f"0.14 repeats the first step's dropout masks there; set dropout to 0, or train on one device")
    # a data-parallel model's batch is split by rows over its devices, where they divide (tfm.runtime.placement)
    self.batch = [filled(shape, dtypes.int32, dev, c.pad_id, batch_axis(model, shape[0])) for shape in shapes]
    self.loss_out = filled((1,), dtypes.float32, dev)
    if c.dropout > 0: rng_state(dev)   # made before the capture, which must hold kernels only
    # tinygrad-0.14: private RNG tables (Tensor._device_seeds, _device_rng_counters; manual_seed replaces them): the step's, or None
    self.rng = (Tensor._device_seeds[dev], Tensor._device_rng_counters[dev]) if dev in Tensor._device_seeds else None
    # tinygrad-0.14: a sharded batch's axis is only on its uop (uop.axis)
    key = {"step": "train", "config": c.to_dict(), "dtype": str(model.generator.weight.dtype), "device": dev,
           "parallel": model.parallel, "rows split": self.batch[0].uop.axis == 0 if model.parallel else False,
           "tuned": tuned_entry(model.target or dev), "batch": [list(s) for s in shapes], "label_smoothing": label_smoothing,
           "adam": {"b1": opt.b1, "b2": opt.b2, "eps": opt.eps, "clip_norm": opt.clip_norm, "dtype": str(opt.param_dtype)}}
    self.step = CompiledStep(self._step, None, model.on_device, key, self.named, model.target or dev)

  def named(self) -> dict[str, Tensor]:
    """Every buffer the step reads or writes, under a name that is the same in every process."""
    opt = self.opt
    out = {f"weight:{name}": t for name, t in get_state_dict(self.model).items()}
    if self.model.positions is not None: out["positions"] = self.model.positions.table()
    out.update({"adam.m": opt.m[0], "adam.v": opt.v[0], "adam.b1_t": opt.b1_t, "adam.b2_t": opt.b2_t, "adam.lr": opt.lr,
                "batch.src": self.batch[0], "batch.tgt_in": self.batch[1], "batch.labels": self.batch[2], "loss": self.loss_out})
    if self.rng is not None: out.update({"rng.seeds": self.rng[0], "rng.counter": self.rng[1]})
    return out

  def _step(self) -> None:
    src, tgt_in, labels = self.batch
    with Context(TRAINING=1):
      self.opt.zero_grad()
      value = loss(self.model, src, tgt_in, labels, self.label_smoothing)
      value.backward()
      # the loss is realized with the update, so it is the loss of the weights the batch saw
      Tensor.realize(self.loss_out.assign(value.reshape(1).float()), *self.opt.schedule_step())

  def __call__(self, src: np.ndarray, tgt_in: np.ndarray, labels: np.ndarray) -> float:
    for buffer, array in zip(self.batch, (src, tgt_in, labels), strict=True):
      if array.shape != buffer.shape:
        raise InputError(f"this train step takes batches of shapes {[b.shape for b in self.batch]}, got {array.shape}: "
                         f"make a TrainStep for the new shape")
      upload(buffer, array)
    self.step()
    return float(download(self.loss_out)[0])


def rng_state(device: str) -> None:
  """Realize tinygrad's random-number state for `device` (its seed and counter buffers), which the first random draw
  there would otherwise create inside the step's capture. Advances nothing: the counter moves by 0."""
  # tinygrad-0.14: private Tensor._next_counter/_device_seeds: the first random draw would create them inside the capture
  if device not in Tensor._device_seeds:
    seed, counter = Tensor._next_counter(device, 0)
    Tensor.realize(seed, Tensor._device_rng_counters[device], counter)
