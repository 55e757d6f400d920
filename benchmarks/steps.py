"""Where a decode step's time goes: every kernel of one replayed step of an opus-mt-shaped model, timed alone.

    python -m benchmarks steps --backends CL --beam 4 --batch 8 [--dtype int8]

The model has opus-mt-en-de's shape (d_model 512, 6+6 layers, 8 heads, FFN 2048, 58,101 tokens) with tfm's own random
initial weights (no transformers needed). After a warm-up decode of 32 tokens, each launch of the compiled beam (or,
for --beam 1, greedy) step at position 20 is run alone, as a decode runs it, and waited for; the rows are kernel families (tinygrad's kernel
names: the same shape and schedule), with their launch count and summed time, largest first. `step_ms` is the
step's wall time launched as a decode launches it (no waits in between).
"""
from __future__ import annotations

import collections
import re
import time

import numpy as np

COLUMNS = ["backend", "kernel", "launches", "ms", "share"]
OPUS = dict(vocab_size=58101, d_model=512, n_heads=8, d_ff=2048, n_encoder_layers=6, n_decoder_layers=6, dropout=0.0,
            max_len=512, pad_id=58100, eos_id=0, bos_id=58100, decoder_start_id=58100, activation="swish",
            positional="half_split", output_bias=True)
POS = 20


def add_arguments(parser) -> None:
  parser.add_argument("--backends", default="CL", help="comma-separated tfm backends (default: CL)")
  parser.add_argument("--beam", type=int, default=4, help="beam size (1: the greedy step; default: 4)")
  parser.add_argument("--batch", type=int, default=8, help="sources per batch (default: 8)")
  parser.add_argument("--dtype", default=None, choices=("float32", "int8"), help="weights (default: float32)")
  parser.add_argument("--top", type=int, default=15, help="kernel families shown (default: 15)")


def run(args) -> list[dict]:
  import tfm
  from benchmarks.common import print_rows
  from tfm.generation import sessions_of
  from tfm.runtime.memory import drain
  from tfm.runtime.replay import _launch
  rows = []
  for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
    model = tfm.Transformer(tfm.TransformerConfig(**OPUS), device=backend)
    if args.dtype == "int8": model.quantize()
    src = np.random.default_rng(0).integers(3, OPUS["vocab_size"] - 1, (args.batch, 24))
    src[:, -1] = OPUS["eos_id"]
    tfm.generate(model, src, beam_size=args.beam, max_len=32, min_len=32)
    session = sessions_of(model)[-1]
    steps = session.steps[min(session.steps)]
    step = steps.beam if args.beam > 1 else steps.greedy
    families: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for launch in step.launches:   # launched as a decode launches it (a CPU kernel's slices on all cores), then waited for
      t0 = time.perf_counter()
      _launch([launch], {"pos": POS}, cores=True)
      drain(session.device)
      family = families[re.sub(r"\x1b\[[0-9;]*m", "", launch[3].name)]
      family[0] += 1
      family[1] += time.perf_counter() - t0
    drain(session.device)
    t0 = time.perf_counter()
    for _ in range(5): step(POS)
    drain(session.device)
    step_ms = (time.perf_counter() - t0) / 5 * 1e3
    total = sum(t for _, t in families.values())
    print(f"{backend}: beam {args.beam} x batch {args.batch} ({args.dtype or 'float32'}): {len(step.launches)} kernels, "
          f"{total * 1e3:.1f} ms timed alone, step {step_ms:.1f} ms")
    ranked = sorted(families.items(), key=lambda kv: -kv[1][1])[:args.top]
    new = [{"bench": "steps", "backend": backend, "kernel": name, "launches": n, "ms": t * 1e3, "share": t / total,
            "beam": args.beam, "batch": args.batch, "dtype": args.dtype or "float32", "step_ms": step_ms} for name, (n, t) in ranked]
    print_rows(new, COLUMNS)
    rows += new
  return rows
