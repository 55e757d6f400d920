"""Run one model on every backend that runs here and check each against the float64 oracle (tfm/reference.py, numpy):
its logits within 1e-4, its greedy token ids the oracle's own greedy decoding. Same weights, same inputs everywhere.

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
from tinygrad.nn.state import get_state_dict

import backends
import tfm
from tfm.apps import oracle_decode
from tfm.reference import Reference

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
  # the oracle: the same weights in float64 numpy, greedy decoding included (tfm.apps.oracle_decode, not tfm's generate)
  oracle = Reference({k: v.numpy() for k, v in get_state_dict(tfm.load(path, device="CPU")).items()}, config.to_dict())
  want_logits, want_ids = oracle.logits(src, tgt), oracle_decode.greedy(oracle, config, src, 10)[0]

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
print(f"{'backend':<10} {'max |logits - oracle|':>22} {'greedy ids = oracle':>20} {'warm forward ms':>16}")
agree = True
for name, (logits, ids, ms) in results.items():
  diff, same = float(np.abs(logits - want_logits).max()), bool(np.array_equal(ids, want_ids))
  agree &= diff <= 1e-4 and same
  print(f"{name:<10} {diff:>22.2e} {str(same):>20} {ms:>16.1f}")
sys.exit(0 if agree else 1)
