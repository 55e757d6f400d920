"""Train-step benchmark: one teacher-forced Adam step (label-smoothed cross-entropy, backward, gradients clipped to
norm 1, update) of the same weights, timed as tfm.training.trainer.Trainer runs it (tfm.training.trainer.TrainStep) on each backend and
in PyTorch eager, with the time ratio and the largest difference between the two frameworks' losses.

    python -m benchmarks train --backends CPU,CL --config medium     # d=128, 2+2 layers, batch 64 x 32 tokens
"""
from __future__ import annotations

import numpy as np
from tinygrad import GlobalCounters

from benchmarks.common import add_common, config, load_average, measure, print_rows, ratio, torch_or_none, torch_thread_counts
from benchmarks.forward import inputs, same_model, tuned_label
from tfm.nn.transformer import Transformer
from tfm.training.trainer import TrainOptions
from tfm.training.step import FlatAdam, TrainStep

COLUMNS = ["bench", "config", "shape", "backend", "mode", "first_s", "median_ms", "torch_ms", "ratio", "cpu_ms", "cpu_ratio",
           "max_abs_diff", "kernels", "gflops", "cores", "load"]
LR, BETAS, EPS, SMOOTHING = 1e-4, (0.9, 0.98), 1e-9, 0.1  # the paper's Adam (5.3) and label smoothing (5.4)
CLIP = TrainOptions().clip_norm  # the Trainer's gradient clipping


def add_arguments(parser) -> None:
  add_common(parser, config="medium", batch=64, length=32, reps=5)


def run(args) -> list[dict]:
  cfg = config(args.config)
  src, tgt = inputs(cfg, args.batch, args.length)
  tgt_in, labels = np.concatenate([np.full((args.batch, 1), cfg.start_id), tgt[:, :-1]], 1), tgt
  base = dict(bench="train", config=args.config, shape=f"{args.batch}x{args.length}")
  rows: list[dict] = []
  arrays, torch_losses, torch_ms, torch_cpu_ms = None, None, None, None
  for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
    model, arrays = same_model(cfg, backend, arrays)
    if torch_losses is None and (torch := torch_or_none(args)) is not None:
      torch_rows = [torch_row(torch, model, src, tgt_in, labels, args, base, n) for n in torch_thread_counts(torch)]
      torch_losses, torch_ms = torch_rows[0]["losses"], min(r["median_ms"] for r in torch_rows)
      torch_cpu_ms = min(r["cpu_ms"] for r in torch_rows)
      for r in torch_rows: r.pop("losses")
      rows += torch_rows
      print_rows(torch_rows, COLUMNS, header=False)
    params = model.parameters()
    with model.on_device():
      opt = FlatAdam(params, lr=LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, clip_norm=CLIP)   # as tfm.training.trainer.Trainer does
    s, ti, y = (a.astype(np.int32) for a in (src, tgt_in, labels))
    losses: list[float] = []
    train_step = TrainStep(model, opt, SMOOTHING, (s.shape, ti.shape, y.shape))

    def step():
      losses.append(train_step(s, ti, y))

    load = load_average()
    t = measure(step, args.reps, warmup=2)
    diff = None if torch_losses is None else float(np.abs(np.array(losses) - np.array(torch_losses[:len(losses)])).max())
    GlobalCounters.reset()
    step()
    kernels, ops = GlobalCounters.kernel_count, GlobalCounters.global_ops
    rows.append({**base, "backend": backend, "mode": "jit" + tuned_label(model), "first_s": t.first_s,
                 "median_ms": t.median_s * 1e3,
                 "torch_ms": torch_ms, "ratio": ratio(t.median_s * 1e3, torch_ms),
                 "cpu_ms": t.cpu_s * 1e3, "cpu_ratio": ratio(t.cpu_s * 1e3, torch_cpu_ms), "max_abs_diff": diff,
                 "kernels": kernels, "gflops": ops / t.median_s / 1e9, "cores": t.cores, "load": load})
    print_rows(rows[-1:], COLUMNS, header=False)
  print("\nratio = tfm median / the faster PyTorch median, cpu_ratio = the same for CPU time per step;\n"
        "max_abs_diff = largest loss difference over the same steps")
  print_rows(rows, COLUMNS)
  return rows


def torch_row(torch, model: Transformer, src, tgt_in, labels, args, base: dict, threads: int) -> dict:
  """The same step in PyTorch eager (torch.optim.Adam, F.cross_entropy with the same smoothing and ignore index, the
  same gradient clipping)."""
  import torch.nn.functional as F

  from benchmarks.torch_reference import TorchTransformer
  ref = TorchTransformer.from_tfm(model).train()
  opt = torch.optim.Adam(ref.parameters(), lr=LR, betas=BETAS, eps=EPS)
  s, ti, y = (torch.from_numpy(a).long() for a in (src, tgt_in, labels))
  losses = []

  def step():
    opt.zero_grad()
    logits = ref(s, ti)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=model.config.pad_id, label_smoothing=SMOOTHING)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), CLIP)
    opt.step()
    losses.append(loss.item())
  default = torch.get_num_threads()
  torch.set_num_threads(threads)
  try:
    load = load_average()
    timing = measure(step, args.reps, warmup=2)
  finally: torch.set_num_threads(default)
  return {**base, "backend": f"torch {threads}T", "mode": "eager", "first_s": timing.first_s,
          "median_ms": timing.median_s * 1e3, "cpu_ms": timing.cpu_s * 1e3, "cores": timing.cores, "load": load,
          "losses": losses}
