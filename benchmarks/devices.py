"""Several devices: a model split over two CPU devices ("CPU*2") against one CPU device and against CL.

    python -m benchmarks devices --backends CPU,CPU*2,CL --parallel data,tensor

Two workloads, each with the same weights on every backend:
- forward: the base model's teacher-forced logits for a batch of 8 x 64 tokens, as one compiled step (tfm.runtime.replay);
  max_abs_diff is against one CPU device's logits.
- beam: an opus-mt-shaped model (d_model 512, 6+6 layers, 58,101 tokens; tfm's own random weights) decoding a batch of
  8 sources of 24 tokens with beam 4, exactly 32 tokens each; same_ids is the fraction of tokens equal to one CPU
  device's.
vs_cpu is the median time over one CPU device's (below 1 is faster). replay says how the step ran: "lanes N" (one
launch list per device, replayed at the same time from N threads) or "tinygrad" (TinyJit, in order: a capture with
copies between devices, such as tensor parallel's all-reduces).
"""
from __future__ import annotations

import time

import numpy as np

COLUMNS = ["bench", "backend", "parallel", "first_s", "median_ms", "vs_cpu", "max_abs_diff", "same_ids", "replay", "cores"]


def add_arguments(parser) -> None:
  parser.add_argument("--backends", default="CPU,CPU*2,CL", help="comma-separated tfm devices (default: CPU,CPU*2,CL)")
  parser.add_argument("--parallel", default="data,tensor", help="modes for several devices (default: data,tensor)")
  parser.add_argument("--workloads", default="forward,beam", help="forward, beam or both (default: both)")
  parser.add_argument("--reps", type=int, default=3, help="timed calls after the first (default: 3)")


def _placements(args) -> list[tuple[str, str | None]]:
  import backends
  out = []
  for b in [b.strip() for b in args.backends.split(",") if b.strip()]:
    several = len(backends.select(b).devices) > 1
    out += [(b, p.strip()) for p in args.parallel.split(",") if p.strip()] if several else [(b, None)]
  return out


def _median(fn, reps: int) -> tuple[float, float]:
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return first, float(np.median(times))


def forward_row(model, src: np.ndarray, tgt: np.ndarray, reps: int) -> tuple[dict, np.ndarray]:
  """The compiled forward of `model` on a batch: timings, how it replayed, and its logits."""
  from tinygrad import dtypes

  from tfm.runtime.memory import download, drain, filled, to_device
  from tfm.runtime.placement import batch_axis
  from tfm.runtime.replay import CompiledStep
  rows, axis = src.shape[0], batch_axis(model, src.shape[0]) if model.parallel else None
  s, t = (to_device(a.astype(np.int32), model.device, axis=axis) for a in (src, tgt))
  out = filled((rows, tgt.shape[1], model.config.vocab_size), dtypes.float32, model.device, axis=axis)
  def forward() -> None:
    with model.on_device(): out.assign(model.run_decoder(t, model.run_encoder(s), model.padding_mask(s))).realize()
  step = CompiledStep(forward, None, model.on_device)
  first, median = _median(lambda: (step(), drain(model.device)), reps)
  return {"first_s": first, "median_ms": median * 1e3, "replay": _replay(step)}, download(out)


def _replay(step) -> str:
  return f"lanes {len(step.lanes)}" if len(step.lanes) > 1 else "tinygrad" if not step.launches else "launches"


def beam_row(model, src: np.ndarray, reps: int) -> tuple[dict, np.ndarray]:
  import tfm
  from tfm.generation import sessions_of
  def decode(): return tfm.generate(model, src, beam_size=4, max_len=32, min_len=32)
  first, median = _median(decode, reps)
  session = sessions_of(model)[-1]
  return {"first_s": first, "median_ms": median * 1e3, "replay": _replay(session.steps[min(session.steps)].beam)}, decode()


def run(args) -> list[dict]:
  import os

  import tfm
  from benchmarks.common import config, print_rows
  from benchmarks.steps import OPUS
  from tfm.io import weights
  from tinygrad import Tensor
  rows: list[dict] = []
  rng = np.random.default_rng(0)
  for workload in [w.strip() for w in args.workloads.split(",") if w.strip()]:
    cfg = config("base") if workload == "forward" else tfm.TransformerConfig(**OPUS)
    Tensor.manual_seed(0)
    arrays = weights.state_arrays(tfm.Transformer(cfg, device="CPU"))
    lo = max(cfg.pad_id, cfg.bos_id, cfg.eos_id) + 1 if workload == "forward" else 3
    src = rng.integers(lo, cfg.vocab_size - 1, (8, 64 if workload == "forward" else 24))
    tgt = rng.integers(lo, cfg.vocab_size - 1, (8, 64))
    reference = None
    for backend, parallel in _placements(args):
      model = weights.build(cfg, arrays, "random weights", backend, None, parallel)
      row, out = forward_row(model, src, tgt, args.reps) if workload == "forward" else beam_row(model, src, args.reps)
      if reference is None: reference = (row["median_ms"], out)
      same = out.shape == reference[1].shape
      row = {"bench": workload, "backend": backend, "parallel": model.parallel or "-", **row,
             "vs_cpu": row["median_ms"] / reference[0], "cores": os.cpu_count(),
             "max_abs_diff": float(np.abs(out - reference[1]).max()) if workload == "forward" and same else None,
             "same_ids": float((out == reference[1]).mean()) if workload == "beam" and same else None}
      rows.append(row)
      print_rows([row], COLUMNS, header=len(rows) == 1)
      del model
  print("\nvs_cpu: median time / the first backend's (one CPU device; below 1 is faster)")
  print_rows(rows, COLUMNS)
  return rows
