"""One training step: the label-smoothed loss (paper 5.4), tinygrad's Adam over one flat gradient buffer, and the
step that runs both as one TinyJit (what tfm.train.Trainer runs and the train benchmark times)."""
from __future__ import annotations

from tinygrad import Context, Tensor, TinyJit
from tinygrad.helpers import TRAINING, unwrap
from tinygrad.nn.optim import LAMB

from tfm.model import Transformer


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

  def schedule_step(self) -> list[Tensor]:
    if not TRAINING: raise RuntimeError("FlatAdam.schedule_step needs Context(TRAINING=1), as tinygrad's optimizers do")
    pos = self.pos_params
    grads = Tensor.empty(pos[-1], dtype=self.param_dtype, device=self.device)
    for i, p in enumerate(self.params): grads[pos[i]:pos[i + 1]].assign(unwrap(p.grad).flatten().cast(self.param_dtype))
    if self.clip_norm is not None:
      grads = grads * (self.clip_norm / (grads.float().square().sum().sqrt() + 1e-6)).minimum(1.0).cast(grads.dtype)
    # the parameters only enter Adam's update through weight decay, which is 0: the flat update needs the gradients alone
    (update,), extra = self._step([grads], [grads])
    for i, p in enumerate(self.params): p.assign(self._apply_update(p, update[pos[i]:pos[i + 1]].reshape(p.shape).cast(p.dtype)))
    return extra + self.params + self.buffers


class TrainStep:
  """One optimizer step on a batch, captured once with TinyJit: the label-smoothed loss, backward, the FlatAdam update
  (with its gradient clipping). Called with (src, decoder input, labels) device tensors, it returns the loss of the
  weights the batch saw. The Trainer's step, and the one the train benchmark times."""

  def __init__(self, model: Transformer, opt: FlatAdam, label_smoothing: float):
    self.model, self.opt, self.label_smoothing = model, opt, label_smoothing
    self.jit = TinyJit(self._step)

  def _step(self, src: Tensor, tgt_in: Tensor, labels: Tensor) -> Tensor:
    with self.model.on_device(), Context(TRAINING=1):
      self.opt.zero_grad()
      value = loss(self.model, src, tgt_in, labels, self.label_smoothing)
      value.backward()
      # the loss is realized with the update, so it is the loss of the weights the batch saw
      Tensor.realize(value, *self.opt.schedule_step())
    return value

  def __call__(self, src: Tensor, tgt_in: Tensor, labels: Tensor) -> Tensor: return self.jit(src, tgt_in, labels)
