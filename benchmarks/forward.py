"""Forward-pass benchmark: teacher-forced logits (B, T, V) of the same weights in tfm (eager and TinyJit) on each
backend, and in PyTorch eager, with the tfm/PyTorch time ratio and the largest logit difference between them.

    python -m benchmarks forward --backends CPU,CL --config base      # batch 8 x 64 tokens, the paper's base model
    python -m benchmarks forward --backends CPU --part encoder --length 128   # the encoder alone (memory), 8 x 128

The base model's encoder is opus-mt's (d_model 512, 8 heads, FFN 2048, 6 layers, sinusoidal positions; only the
vocabulary differs), so `--part encoder --length 128` is the opus-mt-shaped encoder over 8 sources of 128 tokens.
"""
from __future__ import annotations

import numpy as np
from tinygrad import GlobalCounters, Tensor, TinyJit

from benchmarks.common import (Timing, add_common, config, load_average, measure, print_rows, ratio, timed_torch,
                               torch_or_none, torch_thread_counts)
from tfm.runtime.memory import drain
from tfm.nn.transformer import Transformer
from tfm.runtime import patches
from tfm.io import weights
from tfm.runtime.tuned import tuned_settings

COLUMNS = ["bench", "config", "shape", "backend", "mode", "first_s", "median_ms", "torch_ms", "ratio", "cpu_ms", "cpu_ratio",
           "max_abs_diff", "kernels", "gflops", "cores", "load", "tuned"]


def add_arguments(parser) -> None:
  add_common(parser, config="base", batch=8, length=64, reps=5)
  parser.add_argument("--part", default="all", choices=["all", "encoder"],
                      help="the whole teacher-forced pass (logits), or the encoder alone (its output) (default: all)")


def inputs(cfg, batch: int, length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Random source and target ids (no padding), the same for every framework."""
  rng = np.random.default_rng(seed)
  lo = max(cfg.pad_id, cfg.bos_id, cfg.eos_id) + 1
  return rng.integers(lo, cfg.vocab_size, (batch, length)), rng.integers(lo, cfg.vocab_size, (batch, length))


def same_model(cfg, backend: str, arrays: dict[str, np.ndarray] | None) -> tuple[Transformer, dict[str, np.ndarray]]:
  """The model on a backend with the first backend's weights (arrays, None for the first), so every backend and
  PyTorch run the same numbers; and those weights."""
  if arrays is not None: return weights.build(cfg, arrays, "the first backend's weights", backend), arrays
  Tensor.manual_seed(0)
  model = Transformer(cfg, device=backend)
  return model, weights.state_arrays(model)


def tuned_label(model: Transformer) -> str:
  """'+beamN' when the model's kernels come from `tfm tune` results (see tfm.runtime.tuned), else ''."""
  beam = tuned_settings(model.target or model.device).get("BEAM")
  return f"+beam{beam}" if beam else ""


def counted(model: Transformer, fn) -> tuple[int, float]:
  """Kernels launched and floating-point ops done by one call of fn."""
  GlobalCounters.reset()
  fn()
  drain(model.device)
  return GlobalCounters.kernel_count, GlobalCounters.global_ops


def run(args) -> list[dict]:
  cfg = config(args.config)
  src, tgt = inputs(cfg, args.batch, args.length)
  shape = f"{args.batch}x{args.length}"
  base = dict(bench="forward" if args.part == "all" else "encoder", config=args.config, shape=shape)
  encoder = args.part == "encoder"
  rows: list[dict] = []
  arrays: dict[str, np.ndarray] | None = None
  torch_logits, torch_ms, torch_cpu_ms = None, None, None
  for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
    model, arrays = same_model(cfg, backend, arrays)
    src_t, tgt_t = model.ids(src, "src"), model.ids(tgt, "tgt")

    def eager():
      out = model.encode(src) if encoder else model(src, tgt)
      drain(model.device)
      return out

    forward = TinyJit(lambda s, t: (model.run_encoder(s) if encoder else
                                    model.run_decoder(t, model.run_encoder(s), model.padding_mask(s))).realize())

    def jitted():
      with model.on_device(): out = forward(src_t, tgt_t)
      drain(model.device)
      return out

    if torch_logits is None and (torch := torch_or_none(args)) is not None:
      torch_rows = [torch_row(torch, model, src, tgt, args, base, n, encoder) for n in torch_thread_counts(torch)]
      torch_logits, torch_ms = torch_rows[0].pop("logits"), min(r["median_ms"] for r in torch_rows)
      torch_cpu_ms = min(r["cpu_ms"] for r in torch_rows)
      for r in torch_rows: r.pop("logits", None)
      rows += torch_rows
      print_rows(torch_rows, COLUMNS, header=False)
    for mode, fn in (("eager", eager), ("jit", jitted)):
      hits, misses = patches.lookups.hits, patches.lookups.misses
      load = load_average()
      t: Timing = measure(fn, args.reps, warmup=2 if mode == "jit" else 1)  # the jit captures on its second call
      kernels, ops = counted(model, fn)
      diff = None if torch_logits is None else float(np.abs(fn().numpy() - torch_logits).max())
      rows.append({**base, "backend": backend, "mode": mode + tuned_label(model), "first_s": t.first_s,
                   "median_ms": t.median_s * 1e3,
                   "torch_ms": torch_ms, "ratio": ratio(t.median_s * 1e3, torch_ms),
                   "cpu_ms": t.cpu_s * 1e3, "cpu_ratio": ratio(t.cpu_s * 1e3, torch_cpu_ms), "max_abs_diff": diff,
                   "kernels": kernels, "gflops": ops / t.median_s / 1e9, "cores": t.cores, "load": load})
      if tuned_label(model):  # how many of the kernels compiled here found a tuned entry
        rows[-1]["tuned"] = f"{patches.lookups.hits - hits}/{patches.lookups.hits + patches.lookups.misses - hits - misses}"
      print_rows(rows[-1:], COLUMNS, header=False)
  print("\nratio = tfm median / the faster PyTorch median, cpu_ratio = the same for CPU time per call;\n"
        "load = 1-minute load average when the row started")
  print_rows(rows, COLUMNS)
  return rows


def torch_row(torch, model: Transformer, src: np.ndarray, tgt: np.ndarray, args, base: dict, threads: int,
              encoder: bool = False) -> dict:
  """PyTorch eager on the same weights with `threads` intra-op threads (the cores it kept busy are in `cores`); the
  encoder's output alone where `encoder`."""
  from benchmarks.torch_reference import TorchTransformer
  ref = TorchTransformer.from_tfm(model)
  s, t = torch.from_numpy(src), torch.from_numpy(tgt)

  def forward():
    with torch.inference_mode(): return ref.encode(s) if encoder else ref(s, t)
  return timed_torch(torch, forward, threads, args.reps, base)
