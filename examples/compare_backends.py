"""Run one model on every backend that runs here and check that they agree: same weights, same inputs, same outputs.

    python examples/compare_backends.py                      # every backend that runs here (probing takes seconds)
    python examples/compare_backends.py --backends CPU,CL --model runs/dates/model.safetensors

`tfm compare` is the full version (against the float64 oracle, float16, beam search, a markdown report).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
from tinygrad import Tensor

import backends
import tfm

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--backends", default=None, help="comma-separated backends (default: every one that runs here but the slow PYTHON)")
parser.add_argument("--model", default=None, help="a tfm .safetensors file (default: the tiny config with random weights)")
args = parser.parse_args()

if args.backends: names = args.backends.split(",")
else:
  names = [b.name for b in backends.available() if b.runs and b.name != "PYTHON"]
  print(backends.format_table(backends.available()), end="\n\n")  # probed once per process: the table is free here

with tempfile.TemporaryDirectory() as tmp:
  path = args.model
  if path is None:  # one set of random weights, saved once so that every backend loads the very same numbers
    Tensor.manual_seed(0)
    path = os.path.join(tmp, "tiny.safetensors")
    tfm.save(tfm.Transformer(tfm.TransformerConfig.preset("tiny"), device=names[0]), path)
  rng = np.random.default_rng(0)
  config = tfm.load(path, device=names[0]).config
  src = rng.integers(3, config.vocab_size, (2, 12)); src[:, -1] = config.eos_id
  tgt = rng.integers(3, config.vocab_size, (2, 8)); tgt[:, 0] = config.start_id

  results = {}
  for name in names:
    try:
      model = tfm.load(path, device=name)
      logits = model(src, tgt).numpy()  # the first call compiles every kernel
      start = time.perf_counter()
      model(src, tgt).numpy()
      ms = (time.perf_counter() - start) * 1e3
      ids = tfm.generate(model, src, max_len=10)
    except (tfm.TfmError, ValueError) as e:  # a backend that does not run here: say why and go on
      print(f"{name}: {e}", file=sys.stderr)
      continue
    results[name] = (logits, ids, ms)

if not results: sys.exit("no backend ran; `tfm backends` says why each is unavailable")
first, (ref_logits, ref_ids, _) = next(iter(results)), next(iter(results.values()))
print(f"{'backend':<10} {'max |logits - ' + first + '|':>24} {'greedy ids equal':>17} {'warm forward ms':>16}")
agree = True
for name, (logits, ids, ms) in results.items():
  diff, same = float(np.abs(logits - ref_logits).max()), bool(np.array_equal(ids, ref_ids))
  agree &= diff <= 1e-4 and same
  print(f"{name:<10} {diff:>24.2e} {str(same):>17} {ms:>16.1f}")
sys.exit(0 if agree else 1)
