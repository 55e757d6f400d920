"""Beyond the tiny config (tests/test_equivalence.py): the bundled translation model, the Vision Transformer and an int8
model compute what the float64 oracle computes on every backend that runs here, float16 too where the device has it.

Each check is one forward pass (and for the bundled model a short greedy decode) per backend: the contract of
docs/BACKENDS.md at the sizes users run. One code generator per device, to keep the suite's time: CPU:LLVM and CPU:X86
(the CPU device with other code generators) and the Python emulator (minutes at these sizes) are checked on the tiny
config in test_equivalence.py, and on these models by `tfm compare --backends all`. A file of its own, so that
pytest-xdist runs it beside test_equivalence.py.
"""
from __future__ import annotations

import numpy as np
import pytest

import backends
from backends.compare import dtype_unsupported
from tfm.apps import compare, oracle_decode, subjects
from tfm.apps.compare import TOLERANCE
from tfm.generation import generate

NAMES = [n for n in backends.NAMES if n not in ("CPU:LLVM", "CPU:X86", "PYTHON")]
STEPS = 12   # greedy tokens of the bundled model: its dates are 10 tokens and eos


@pytest.fixture(scope="module")
def probed() -> dict[str, backends.BackendInfo]:
  return {info.name: info for info in backends.available(timeout=120.0)}


def running(name: str, probed, dtype: str = "float32") -> backends.BackendInfo:
  info = probed[name]
  if not info.runs: pytest.skip(f"{name} does not run here ({info.status}: {info.reason})")
  if (why := dtype_unsupported(info, dtype)) is not None: pytest.skip(f"{dtype} unsupported on {name}: {why}")
  return info


def worst(got: np.ndarray, want: np.ndarray) -> float: return float(np.abs(got.astype(np.float64) - want).max())


@pytest.mark.parametrize("name", NAMES)
def test_bundled_model_logits_and_greedy_decoding_are_the_oracles(name, probed):
  info, s = running(name, probed), subjects.load_subject("bundled")
  with backends.use(info):
    m = compare.model_on(s, info.name)
    logits, ids = m(s.src, s.tgt).numpy(), generate(m, s.src, beam_size=1, max_len=STEPS)
  assert worst(logits, compare.oracle(s)["logits"]) <= TOLERANCE["float32"]
  np.testing.assert_array_equal(ids, oracle_decode.greedy(compare.oracle_model(s), s.config, s.src, STEPS)[0])


@pytest.mark.parametrize("name", NAMES)
def test_float16_logits_of_the_bundled_model_match_the_oracle_where_supported(name, probed):
  # a trained model's logits are larger than the tiny random model's: float16 holds them only with LayerNorm and the
  # softmax computed in float32 (in float16 throughout, CPU was off by 2.2e-2)
  info, s = running(name, probed, "float16"), subjects.load_subject("bundled")
  with backends.use(info): logits = compare.model_on(s, info.name, "float16")(s.src, s.tgt).numpy()
  assert worst(logits, compare.oracle(s, "float16")["logits"]) <= TOLERANCE["float16"]


@pytest.mark.parametrize("name", NAMES)
def test_vit_features_logits_and_top_class_are_the_oracles(name, probed):
  info, s = running(name, probed), subjects.load_subject("vit")
  expected = compare.oracle(s)
  with backends.use(info):
    m = compare.model_on(s, info.name)
    features, logits = m.features(s.pixels).numpy(), m(s.pixels).numpy()
  assert worst(features, expected["features"]) <= TOLERANCE["float32"] and worst(logits, expected["logits"]) <= TOLERANCE["float32"]
  np.testing.assert_array_equal(logits.argmax(-1), expected["logits"].argmax(-1))


@pytest.mark.parametrize("name", NAMES)
def test_int8_logits_are_the_oracles_of_the_dequantized_weights(name, probed):
  info, s = running(name, probed), subjects.tiny_subject(seed=1)
  with backends.use(info): logits = compare.model_on(s, info.name, "int8")(s.src, s.tgt).numpy()
  assert worst(logits, compare.oracle(s, "int8")["logits"]) <= TOLERANCE["int8"]
