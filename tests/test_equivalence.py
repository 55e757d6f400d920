"""Every backend that runs here computes what the float64 oracle computes: the logits of a forward pass, a training
step's loss and gradients, greedy decoding and beam search (ids and scores: the oracle's own decoding, tfm.apps.oracle_decode),
and float16 logits and greedy decoding where the device supports float16. tests/test_equivalence_models.py does the
same for the bundled model, the Vision Transformer and an int8 model.

Parametrised over every backend tfm knows, and the tiny model split over two CPU devices ("CPU*2": tensor parallel on
the subject's batch of 3, tfm.apps.compare.model_on); those that do not run here are skipped with the probe's reason. The fast
backends use the tiny config (the numerical contract is stated on it); the Python emulator, which interprets each
kernel element by element, a very small one. Tolerances come from tfm.apps.compare.TOLERANCE, the one place they live.
Each backend builds its model once (module-scoped cache): tinygrad compiles every kernel anew for each backend.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from tinygrad import Context, Tensor

import backends
from backends.compare import dtype_unsupported
from tfm.nn.base import unique_state
from tfm.apps import compare, oracle_decode
from tfm.apps import subjects
from tfm.apps.compare import TOLERANCE
from tfm.generation import generate
from tfm.reference import Reference

GREEDY_LEN = 6   # greedy decoding steps: enough to pass eos-free positions through the KV cache, cheap on the emulator
BEAM = 3
TINY = subjects.tiny_subject(seed=3, dropout=0.0)
# the emulator's subject: every kernel kind of the model, at sizes it interprets in seconds
MICRO = dataclasses.replace(
  subjects.tiny_subject(seed=4, dropout=0.0, d_model=8, n_heads=2, d_ff=16, n_encoder_layers=1, n_decoder_layers=1,
                       vocab_size=12, max_len=8),
  src=np.array([[5, 6, 7, 2], [9, 10, 2, 0]], np.int32), tgt=np.array([[1, 5, 6], [1, 9, 10]], np.int32))


PROBE_TIMEOUT = 120.0   # a loaded machine can take the default 20 s to start a probe's Python; a timeout would skip the backend


@pytest.fixture(scope="session")
def probed() -> dict[str, backends.BackendInfo]:
  return {info.name: info for info in backends.available(timeout=PROBE_TIMEOUT)}


@pytest.fixture(scope="module")
def cache() -> dict:
  return {}


def subject_for(name: str) -> subjects.Subject: return MICRO if name == "PYTHON" else TINY


def running(name: str, probed) -> backends.BackendInfo:
  if "*" in name: return backends.select(name)   # several devices of a backend that runs here
  info = probed[name]
  if not info.runs: pytest.skip(f"{name} does not run here ({info.status}: {info.reason})")
  return info


def once(cache: dict, key: tuple, compute):
  if key not in cache: cache[key] = compute()
  return cache[key]


def model(cache, info, dtype="float32"):
  def build():
    with backends.use(info): return compare.model_on(subject_for(info.name), info.label, dtype)
  return once(cache, ("model", info.label, dtype), build)


# --- the oracle's side ------------------------------------------------------------------------------------------

def oracle_loss(arrays: dict[str, np.ndarray], subject: subjects.Subject) -> float:
  """Mean cross-entropy of next-token prediction over the targets, in float64."""
  logits = Reference(arrays, subject.config.to_dict()).logits(subject.src, subject.tgt[:, :-1])
  logits = logits - logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return float(-np.take_along_axis(logp, subject.tgt[:, 1:, None], -1).mean())


def finite_difference(subject: subjects.Subject, name: str, index: tuple[int, ...], eps: float = 1e-6) -> float:
  """d loss / d weight[index] by central differences on the float64 oracle (error ~1e-9 at this eps)."""
  arrays = {k: v.astype(np.float64) for k, v in subject.arrays.items()}
  base = arrays[name][index]
  arrays[name][index] = base + eps
  up = oracle_loss(arrays, subject)
  arrays[name][index] = base - eps
  return (up - oracle_loss(arrays, subject)) / (2 * eps)


def oracle_greedy(subject: subjects.Subject, steps: int, arrays: dict[str, np.ndarray] | None = None,
                  margins: list | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Greedy decoding with the oracle: ids (argmax of the last position, finished rows padded, cut to the longest row)
  and scores (mean log-probability of each row's tokens, eos counted), as tfm.generate returns them.

  `arrays` replaces the subject's weights (float16-rounded ones, say); `margins` collects each step's smallest gap
  between the best and the second-best logit of the rows still decoding: how far a backend may stray and still agree."""
  ref = Reference(subject.arrays if arrays is None else arrays, subject.config.to_dict())
  return oracle_decode.greedy(ref, subject.config, subject.src, steps, margins)


# --- the backend's side -----------------------------------------------------------------------------------------

def training_step(cache, info):
  """Teacher-forced logits, the loss (next-token cross-entropy) and its gradients, realized together (one compile of
  forward and backward per backend); dropout 0, so that every backend computes the same thing."""
  def run():
    m, s = model(cache, info), subject_for(info.name)
    params = unique_state(m)
    with backends.use(info), Context(TRAINING=1):
      logits = m(s.src, s.tgt[:, :-1])
      loss = logits.sparse_categorical_crossentropy(Tensor(s.tgt[:, 1:], device=m.device))
      loss.backward()
      Tensor.realize(logits, loss, *(p.grad for p in params.values()))
    return logits.numpy(), loss.item(), {name: p.grad.numpy() for name, p in params.items()}
  return once(cache, ("train", info.label), run)


BACKENDS = [*backends.NAMES, "CPU*2"]


@pytest.mark.parametrize("name", BACKENDS)
def test_logits_match_the_float64_oracle(name, probed, cache):
  info = running(name, probed)
  s = subject_for(name)
  logits, _, _ = training_step(cache, info)
  expected = Reference(s.arrays, s.config.to_dict()).logits(s.src, s.tgt[:, :-1])
  assert logits.shape == expected.shape == (*s.tgt[:, :-1].shape, s.config.vocab_size)
  assert np.abs(logits - expected).max() <= TOLERANCE["float32"]


@pytest.mark.parametrize("name", BACKENDS)
def test_training_loss_matches_the_oracle(name, probed, cache):
  info = running(name, probed)
  _, loss, _ = training_step(cache, info)
  assert abs(loss - oracle_loss(subject_for(name).arrays, subject_for(name))) <= TOLERANCE["float32"]


@pytest.mark.parametrize("name", BACKENDS)
def test_gradients_match_finite_differences_of_the_oracle(name, probed, cache):
  info = running(name, probed)
  s = subject_for(name)
  _, _, grads = training_step(cache, info)
  rng = np.random.default_rng(0)
  checked = 0
  for param, grad in grads.items():
    # the entry that matters most, and one drawn at random (often a zero: a pad row, an unused token)
    for index in {np.unravel_index(np.abs(grad).argmax(), grad.shape), tuple(int(rng.integers(n)) for n in grad.shape)}:
      assert abs(grad[index] - finite_difference(s, param, index)) <= TOLERANCE["float32"], (param, index)
      checked += 1
  assert checked >= len(grads) >= 10


@pytest.mark.parametrize("name", [n for n in BACKENDS if n != "CPU"])
def test_every_gradient_matches_cpu(name, probed, cache):
  info, cpu = running(name, probed), running("CPU", probed)
  if subject_for(name) is not TINY: pytest.skip(f"{name} runs a smaller config than CPU: checked against the oracle only")
  _, loss, grads = training_step(cache, info)
  _, cpu_loss, cpu_grads = training_step(cache, cpu)
  assert abs(loss - cpu_loss) <= TOLERANCE["float32"]
  assert grads.keys() == cpu_grads.keys()
  for param in grads: np.testing.assert_allclose(grads[param], cpu_grads[param], rtol=0, atol=TOLERANCE["float32"], err_msg=param)


def greedy(cache, info) -> tuple[np.ndarray, np.ndarray]:
  def run():
    with backends.use(info):
      return generate(model(cache, info), subject_for(info.name).src, beam_size=1, max_len=GREEDY_LEN, return_scores=True)
  return once(cache, ("greedy", info.label), run)


@pytest.mark.parametrize("name", BACKENDS)
def test_greedy_decoding_is_the_oracles(name, probed, cache):
  info = running(name, probed)
  (ids, scores), (expected_ids, expected_scores) = greedy(cache, info), oracle_greedy(subject_for(name), GREEDY_LEN)
  np.testing.assert_array_equal(ids, expected_ids)
  # the scores sum every step's log-probability: a KV-cache slip that leaves the argmax alone still shows here
  np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=TOLERANCE["float32"])


@pytest.mark.parametrize("name", [n for n in BACKENDS if n != "CPU"])
def test_greedy_decoding_is_identical_to_cpus(name, probed, cache):
  info, cpu = running(name, probed), running("CPU", probed)
  if subject_for(name) is not TINY: pytest.skip(f"{name} runs a smaller config than CPU: checked against the oracle only")
  np.testing.assert_array_equal(greedy(cache, info)[0], greedy(cache, cpu)[0])


def beam(cache, info) -> tuple[np.ndarray, np.ndarray]:
  def run():
    with backends.use(info):
      return generate(model(cache, info), subject_for(info.name).src, beam_size=BEAM, max_len=GREEDY_LEN, return_scores=True)
  return once(cache, ("beam", info.label), run)


def rows(ids: np.ndarray, pad_id: int) -> list[list[int]]:
  """Each row's tokens, the padding after its end dropped."""
  out = []
  for row in ids.tolist():
    while row and row[-1] == pad_id: row.pop()
    out.append(row)
  return out


@pytest.mark.parametrize("name", BACKENDS)
def test_beam_search_is_the_oracles(name, probed, cache):
  info = running(name, probed)
  s = subject_for(name)
  ids, scores = beam(cache, info)
  expected_ids, expected_scores = oracle_decode.beam(Reference(s.arrays, s.config.to_dict()), s.config, s.src, BEAM, GREEDY_LEN)
  assert rows(ids, s.config.pad_id) == rows(expected_ids, s.config.pad_id)
  np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=TOLERANCE["float32"])


@pytest.mark.parametrize("name", BACKENDS)
def test_float16_logits_match_the_oracle_where_supported(name, probed, cache):
  info = running(name, probed)
  if (why := dtype_unsupported(info, "float16")) is not None: pytest.skip(f"float16 unsupported on {name}: {why}")
  s, m = subject_for(name), model(cache, info, "float16")
  with backends.use(info): logits = m(s.src, s.tgt).numpy().astype(np.float64)
  assert np.abs(logits - compare.oracle(s, "float16")["logits"]).max() <= TOLERANCE["float16"]


@pytest.mark.parametrize("name", BACKENDS)
def test_float16_greedy_decoding_is_the_oracles_where_supported(name, probed, cache):
  info = running(name, probed)
  if (why := dtype_unsupported(info, "float16")) is not None: pytest.skip(f"float16 unsupported on {name}: {why}")
  s, margins = subject_for(name), []
  rounded = {k: v.astype(np.float16).astype(np.float64) for k, v in s.arrays.items()}
  expected_ids, expected_scores = oracle_greedy(s, GREEDY_LEN, rounded, margins)
  # a float16 backend may be off by the tolerance in every logit: each choice must be clear by more than twice that
  assert min(margins) > 2 * TOLERANCE["float16"], margins
  with backends.use(info): ids, scores = generate(model(cache, info, "float16"), s.src, beam_size=1, max_len=GREEDY_LEN,
                                                  return_scores=True)
  np.testing.assert_array_equal(ids, expected_ids)
  np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=TOLERANCE["float16"])
