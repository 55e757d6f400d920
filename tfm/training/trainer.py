"""Training (paper section 5): teacher forcing, label smoothing, the warmup schedule, Adam, checkpoints that resume exactly.

One compiled step (tfm.training.step, kept in the compiled-program cache) does forward, backward and the Adam update;
the loss it reports is the one before the update.
A run in `out/` keeps its checkpoints in `out/step-NNNNNNNN/` (model, optimizer, step, every RNG) with `out/latest`
naming the newest, and leaves the trained model in `out/model.safetensors` with its vocabulary in `out/vocab.json`.

The bundled model was trained with `tfm train --task dates --config small`; tfm/assets/README.md has the command
and its measured accuracy. The step itself (loss, FlatAdam, TrainStep) is tfm.training.step.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from tinygrad import Tensor
from tinygrad.helpers import tqdm

from tfm.io import weights
from tfm.config import PRESETS, TransformerConfig
from tfm.errors import ConfigError, WeightsError
from tfm.training.evaluation import evaluate
from tfm.files import atomic_folder, write_text
from tfm.runtime.memory import to_device, upload
from tfm.nn.transformer import Transformer
from tfm.runtime.placement import resolve_device
from tfm.training.tasks import Task, encode_batch, get_task
from tfm.io.tokenizer import CharTokenizer
from tfm.training.step import FlatAdam, TrainStep, loss


def resolve_config(spec: str | dict | TransformerConfig, tokenizer: CharTokenizer) -> TransformerConfig:
  """A preset name, a JSON file, a dict or a config, with the vocabulary size and special ids of the tokenizer."""
  vocab = dict(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
  if isinstance(spec, TransformerConfig): fields = spec.to_dict()
  elif isinstance(spec, dict): fields = dict(spec)
  elif spec in PRESETS: fields = {**TransformerConfig().to_dict(), **PRESETS[spec], **vocab}   # the task's vocabulary
  elif spec.endswith(".json"):
    try:
      with open(spec, encoding="utf-8") as f: fields = json.load(f)
    except json.JSONDecodeError as e: raise ConfigError(f"config file {spec} is not valid JSON: {e}") from None
    if not isinstance(fields, dict): raise ConfigError(f"config file {spec} must hold a JSON object of TransformerConfig fields")
  else:
    raise ConfigError(f"--config {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a .json file of config fields")
  for name, value in vocab.items():
    if fields.setdefault(name, value) != value:
      raise ConfigError(f"config has {name}={fields[name]} but the task's vocabulary needs {name}={value}; "
                        f"leave {name} out of the config and it is filled in")
  return TransformerConfig.from_dict(fields)


def noam_lr(step: int, d_model: int, warmup: int, scale: float = 1.0) -> float:
  """5.3 lrate = scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), for steps counted from 1."""
  return scale * d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


# --- training -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainOptions:
  """How to train: the schedule, batches, evaluation and checkpoints (everything but the model's sizes)."""
  steps: int = 1000
  batch_size: int = 64
  warmup: int = 400
  lr_scale: float = 1.0
  label_smoothing: float = 0.1
  clip_norm: float | None = 1.0
  seed: int = 0
  eval_every: int = 500
  eval_size: int = 200
  checkpoint_every: int = 500

  def __post_init__(self):
    for name in ("steps", "batch_size", "warmup", "eval_every", "eval_size", "checkpoint_every"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer")
    if not self.lr_scale > 0: raise ConfigError(f"lr_scale={self.lr_scale!r} must be > 0")
    if not 0.0 <= self.label_smoothing < 1.0: raise ConfigError(f"label_smoothing={self.label_smoothing!r} must be in [0, 1)")
    if self.clip_norm is not None and not self.clip_norm > 0:
      raise ConfigError(f"clip_norm={self.clip_norm!r} must be > 0, or None for no clipping")


def _device_key(device: str | tuple[str, ...]) -> str:
  """A device as a JSON key: tinygrad keeps RNG state per device and per tuple of devices (a split model's)."""
  return device if isinstance(device, str) else "+".join(device)


def _device_of(key: str) -> str | tuple[str, ...]: return tuple(key.split("+")) if "+" in key else key


class Trainer:
  """Trains a Transformer on a task: `run()` goes to `options.steps`, checkpointing into `out` when it is given."""

  def __init__(self, task: Task | str, config: str | dict | TransformerConfig = "small", options: TrainOptions | None = None,
               device: str | None = None, out: str | None = None, progress: bool | None = None):
    self.task = get_task(task) if isinstance(task, str) else task
    self.tokenizer = self.task.tokenizer
    self.options = options or TrainOptions()
    self.out, self.progress = out, progress
    self.config = resolve_config(config, self.tokenizer)
    self.src_len, self.tgt_len = self.task.max_source_len + 1, self.task.max_target_len + 1
    if max(self.src_len, self.tgt_len) > self.config.max_len:
      raise ConfigError(f"max_len={self.config.max_len} is shorter than the task's sequences "
                        f"({self.src_len} source, {self.tgt_len} target tokens with eos); raise max_len")
    Tensor.manual_seed(self.options.seed)
    self.rng = np.random.default_rng(self.options.seed)
    # on several devices training splits the batch (data parallel), whatever the model's size
    several = device is not None and isinstance(resolve_device(device)[0], tuple)
    self.model = Transformer(self.config, device=device, parallel="data" if several else None)
    self.params = self.model.parameters()
    # the update of every parameter in one flat buffer: a few kernels instead of a few per parameter
    self.opt = FlatAdam(self.params, lr=0.0, b1=0.9, b2=0.98, eps=1e-9, clip_norm=self.options.clip_norm)
    self.step = self.tokens = 0
    self.losses: list[float] = []  # the loss of every step so far, before that step's update
    self._compiled_step = self._new_step()
    self.eval_pairs = self.task.examples(self.options.eval_size, "test", seed=0)

  def _new_step(self) -> TrainStep:
    """The compiled train step over the model's current buffers (looked up in the compiled-program cache)."""
    widths = (self.src_len, self.tgt_len, self.tgt_len)
    return TrainStep(self.model, self.opt, self.options.label_smoothing, tuple((self.options.batch_size, w) for w in widths))

  def _rng_tables(self) -> tuple[dict, dict]:
    """tinygrad's RNG seeds and counters per device, the model's device's as this trainer's step reads them (another
    trainer's Tensor.manual_seed may have replaced tinygrad's own since)."""
    # tinygrad-0.14: Tensor._device_seeds and _device_rng_counters are private RNG tables
    seeds, counters = dict(Tensor._device_seeds), dict(Tensor._device_rng_counters)
    if (own := self._compiled_step.rng) is not None: seeds[self.model.device], counters[self.model.device] = own
    return seeds, counters

  def loss(self, src: Tensor, tgt_in: Tensor, labels: Tensor) -> Tensor:
    """The training loss of this trainer's model on a batch (dropout only under Context(TRAINING=1))."""
    return loss(self.model, src, tgt_in, labels, self.options.label_smoothing)

  def lr(self, step: int) -> float: return noam_lr(step, self.config.d_model, self.options.warmup, self.options.lr_scale)

  def next_batch(self) -> tuple[np.ndarray, ...]:
    """The next training batch (src, decoder input, labels), drawn from the trainer's seeded generator."""
    pairs = [self.task.sample(self.rng, "train") for _ in range(self.options.batch_size)]
    return encode_batch(self.tokenizer, pairs, self.src_len, self.tgt_len)

  def train_step(self) -> float:
    """One optimizer step on a fresh batch; the loss before the update."""
    batch = self.next_batch()
    self.tokens += int(sum((a != self.config.pad_id).sum() for a in (batch[0], batch[2])))
    self.step += 1
    self.opt.set_lr(self.lr(self.step))
    loss = self._compiled_step(*batch)
    self.losses.append(loss)
    return loss

  def evaluate(self, pairs: list[tuple[str, str]] | None = None) -> dict[str, float]:
    return evaluate(self.model, self.tokenizer, self.eval_pairs if pairs is None else pairs)

  # --- checkpoints ---

  def state_metadata(self) -> dict[str, str]:
    seeds, counters = self._rng_tables()
    # tinygrad-0.14: Tensor._seed and the per-device RNG tables are private: saved as they are
    rng = {"seed": Tensor._seed, "device_seeds": {_device_key(d): t.numpy().tolist() for d, t in seeds.items()},
           "device_counters": {_device_key(d): t.numpy().tolist() for d, t in counters.items()}, "batches": self.rng.bit_generator.state}
    return {"step": str(self.step), "task": self.task.name, "options": json.dumps(dataclasses.asdict(self.options)),
            "rng": json.dumps(rng), "losses": json.dumps(self.losses)}

  def save_checkpoint(self) -> str:
    """Write out/step-N/ (model + optimizer + step + RNG) and point out/latest at it; older checkpoints are removed."""
    if self.out is None: raise ConfigError("this trainer has no output folder; pass out=... to save checkpoints")
    os.makedirs(self.out, exist_ok=True)
    name = f"step-{self.step:08d}"
    final = os.path.join(self.out, name)
    def fill(tmp: str) -> None:
      weights.save(self.model, os.path.join(tmp, "model.safetensors"))
      save_file(self.optimizer_state(), os.path.join(tmp, "optimizer.safetensors"), metadata=self.state_metadata())
      self.tokenizer.save(os.path.join(tmp, "vocab.json"))
    atomic_folder(final, fill)
    previous = self.latest_checkpoint(self.out)
    write_text(os.path.join(self.out, "latest"), name + "\n")
    if previous is not None and os.path.basename(previous) != name: shutil.rmtree(previous, ignore_errors=True)
    return final

  def optimizer_state(self) -> dict[str, np.ndarray]:
    """Adam's state as a checkpoint stores it: b1_t, b2_t and each parameter's moments m.i and v.i in its own shape
    (the fused optimizer holds them as two flat buffers; the file keeps one tensor per parameter)."""
    pos, state = self.opt.pos_params, {"b1_t": self.opt.b1_t.numpy(), "b2_t": self.opt.b2_t.numpy()}
    for name, flat in (("m", self.opt.m[0].numpy()), ("v", self.opt.v[0].numpy())):
      for i, p in enumerate(self.params): state[f"{name}.{i}"] = flat[pos[i]:pos[i + 1]].reshape(p.shape)
    return state

  def restore_optimizer(self, arrays: dict[str, np.ndarray]) -> None:
    """The inverse of optimizer_state; a state of another model (a name missing, a shape that differs) is refused."""
    for i, p in enumerate(self.params):
      for name in (f"m.{i}", f"v.{i}"):
        if name not in arrays or arrays[name].shape != p.shape:
          got = "missing" if name not in arrays else f"of shape {arrays[name].shape}"
          raise WeightsError(f"the checkpoint's optimizer state {name} is {got}, parameter {i} has shape {p.shape}: "
                             f"the checkpoint is not from this model's trainer")
    flat = {m: np.concatenate([arrays[f"{m}.{i}"].reshape(-1) for i in range(len(self.params))]) for m in "mv"}
    for t, value in ((self.opt.b1_t, arrays["b1_t"]), (self.opt.b2_t, arrays["b2_t"]), (self.opt.m[0], flat["m"]), (self.opt.v[0], flat["v"])):
      upload(t, value.reshape(t.shape))   # in place: the compiled step reads these buffers

  @staticmethod
  def latest_checkpoint(out: str) -> str | None:
    try:
      with open(os.path.join(out, "latest")) as f: name = f.read().strip()
    except FileNotFoundError: return None
    return os.path.join(out, name)

  def load_checkpoint(self, path: str) -> None:
    """Restore model, optimizer, step and RNG from a checkpoint folder, so the run goes on as if never stopped."""
    opt_path = os.path.join(path, "optimizer.safetensors")
    if not os.path.exists(opt_path): raise WeightsError(f"{path} is not a checkpoint (no optimizer.safetensors)")
    with safe_open(opt_path, "np") as f: meta = f.metadata()
    if meta.get("task") != self.task.name:
      raise ConfigError(f"checkpoint {path} trains task {meta.get('task')!r}, not {self.task.name!r}; resume with --task {meta.get('task')}")
    weights.load_into(self.model, os.path.join(path, "model.safetensors"))
    self._compiled_step = self._new_step()   # the weights are new buffers: a step over them
    self.restore_optimizer(load_file(opt_path))
    self.step, self.losses = int(meta["step"]), json.loads(meta["losses"])
    rng = json.loads(meta["rng"])
    # tinygrad-0.14: RNG restored by writing the private Tensor._seed and per-device tables
    Tensor._seed = rng["seed"]
    for table, own, saved in zip((Tensor._device_seeds, Tensor._device_rng_counters), self._rng_tables(),
                                 (rng["device_seeds"], rng["device_counters"])):
      for key, v in saved.items():   # into the buffers the compiled step reads, where they exist
        d = _device_of(key)
        if d in own: upload(own[d], np.array(v, np.uint32))
        else: table[d] = to_device(np.array(v, np.uint32), d)
    self.rng.bit_generator.state = rng["batches"]

  @classmethod
  def resume(cls, out: str, steps: int | None = None, device: str | None = None, progress: bool | None = None) -> Trainer:
    """A trainer restored from the newest checkpoint in `out`, to run on to `steps` (default: the run's own total)."""
    path = cls.latest_checkpoint(out)
    if path is None: raise WeightsError(f"no checkpoint in {out} (no {os.path.join(out, 'latest')}); start a run without --resume")
    with safe_open(os.path.join(path, "optimizer.safetensors"), "np") as f: meta = f.metadata()
    options = TrainOptions(**json.loads(meta["options"]))
    if steps is not None: options = dataclasses.replace(options, steps=steps)
    config = weights.read(os.path.join(path, "model.safetensors")).config
    trainer = cls(meta["task"], config, options, device=device, out=out, progress=progress)
    trainer.load_checkpoint(path)
    return trainer

  # --- the loop ---

  def run(self) -> dict[str, float]:
    """Train to options.steps with periodic evaluation and checkpoints; save the model; the final evaluation."""
    o = self.options
    show = self.progress if self.progress is not None else sys.stderr.isatty()
    bar = tqdm(total=o.steps, desc="train", disable=not show)
    bar.update(self.step)
    t0, tokens0, first, scores = time.perf_counter(), self.tokens, self.step, None
    while self.step < o.steps:
      loss = self.train_step()
      rate = (self.tokens - tokens0) / (time.perf_counter() - t0)
      bar.set_description(f"loss {loss:.3f} lr {self.lr(self.step):.2e} {rate:,.0f} tok/s")
      bar.update(1)
      if self.step % o.eval_every == 0 or self.step == o.steps:
        scores, recent = self.evaluate(), self.losses[max(first, self.step - o.eval_every):]
        line = (f"step {self.step}: loss {sum(recent) / len(recent):.4f} (mean since last report)  lr {self.lr(self.step):.2e}  "
                f"{rate:,.0f} tok/s  exact {scores['exact_match']:.4f}  token acc {scores['token_accuracy']:.4f}  "
                f"({time.perf_counter() - t0:.0f} s)")
        if show: tqdm.write(line)
        else: print(line, file=sys.stderr, flush=True)
      if self.out is not None and (self.step % o.checkpoint_every == 0 or self.step == o.steps): self.save_checkpoint()
    bar.update(0, close=True)
    if self.out is not None:
      weights.save(self.model, os.path.join(self.out, "model.safetensors"))
      self.tokenizer.save(os.path.join(self.out, "vocab.json"))
    return self.evaluate() if scores is None else scores   # the loop evaluates its last step
