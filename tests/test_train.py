"""Training: a tiny model learns to reverse strings, runs resume exactly and repeat under a seed, a step agrees on
CPU and OpenCL, and the bundled dates model is as accurate as documented."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from tinygrad import Context, Tensor

import backends
from backends.machine import cache_enabled
import tfm
from tfm.nn.base import unique_state
from tfm import cli
from tfm.config import PRESETS
from tfm.files import BUNDLED_MODEL
from tfm.errors import ConfigError, InputError, WeightsError
from tfm.nn.gradients import _matmul_wt_gradient
from tfm.nn.linear import Linear
from tfm.training.tasks import get_task
from tfm.io.tokenizer import CharTokenizer
from tfm.training.trainer import Trainer, TrainOptions, encode_batch, evaluate, loss, noam_lr, resolve_config

ASSETS = Path(BUNDLED_MODEL).parent
# one set of options for every tiny run, so every trainer reuses the same compiled step
STEPS = 400
TINY = {**{k: v for k, v in PRESETS["tiny"].items() if k != "vocab_size"}, "dropout": 0.0}  # a step's loss can be recomputed
OPTIONS = TrainOptions(steps=STEPS, batch_size=32, warmup=100, lr_scale=0.3, eval_every=STEPS, eval_size=100, checkpoint_every=STEPS)


def smoothed_floor(vocab_size: int, eps: float) -> float:
  """The least label-smoothed cross entropy any model can reach: the entropy of the smoothed target distribution."""
  p_true, p_other = 1 - eps + eps / vocab_size, eps / vocab_size
  return -(p_true * math.log(p_true) + (vocab_size - 1) * p_other * math.log(p_other))


@pytest.fixture(scope="module")
def learned():
  trainer = Trainer("reverse", TINY, OPTIONS, device="CPU", progress=False)
  return trainer, trainer.run()


def test_tiny_model_learns_reverse(learned):
  trainer, scores = learned
  # Why 1.2: a model that ignores the source can at best predict the marginal of each target position, ten equally
  # likely letters (+ eos): about ln(10) = 2.3 nats per letter, ~2.1 with eos and smoothing (runs that fail to learn
  # plateau there). The floor with smoothing 0.1 over 13 tokens is 0.54. Below 1.2 the model reads the source.
  floor = smoothed_floor(trainer.tokenizer.vocab_size, OPTIONS.label_smoothing)
  assert 0.5 < floor < 0.6
  assert np.mean(trainer.losses[:10]) > 2.0
  assert np.mean(trainer.losses[-20:]) < 1.2
  # and it reverses strings it never saw in training (greedy decoding, held-out split)
  assert scores["exact_match"] > 0.5 and scores["token_accuracy"] > 0.8


def test_the_reported_loss_is_the_one_before_the_update():
  trainer = Trainer("reverse", TINY, OPTIONS, device="CPU", progress=False)
  for _ in range(3): trainer.train_step()  # past the jit's capture: the step now replays
  state = trainer.rng.bit_generator.state
  batch = [Tensor(a, device="CPU") for a in trainer.next_batch()]
  trainer.rng.bit_generator.state = state  # train_step draws this same batch
  before = trainer.loss(*batch).item()
  reported = trainer.train_step()
  after = trainer.loss(*batch).item()
  assert reported == pytest.approx(before, abs=1e-5)
  assert after < before - 1e-3


def _weights(trainer: Trainer) -> dict[str, np.ndarray]:
  return {k: v.numpy() for k, v in unique_state(trainer.model).items()}


def test_resume_continues_bit_for_bit(tmp_path):
  straight = Trainer("reverse", "tiny", TrainOptions(**{**OPTIONS.__dict__, "steps": 8}), device="CPU",
                     out=str(tmp_path / "a"), progress=False)
  straight.run()
  first = Trainer("reverse", "tiny", TrainOptions(**{**OPTIONS.__dict__, "steps": 4}), device="CPU",
                  out=str(tmp_path / "b"), progress=False)
  first.run()
  assert (tmp_path / "b" / "latest").read_text().strip() == "step-00000004"
  resumed = Trainer.resume(str(tmp_path / "b"), steps=8, device="CPU", progress=False)
  assert resumed.step == 4
  resumed.run()
  for later in (first, resumed) if cache_enabled() else ():   # launched the step the first trainer stored, uncaptured
    assert later._compiled_step.step.launches and later._compiled_step.step.jit.captured is None
  assert resumed.losses == straight.losses  # the same floats, step by step (tiny has dropout 0.1: the RNG resumes too)
  for name, value in _weights(straight).items(): np.testing.assert_array_equal(_weights(resumed)[name], value, err_msg=name)
  # one checkpoint is kept, and the finished run leaves a loadable model and its vocabulary
  assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["latest", "model.safetensors", "step-00000008", "vocab.json"]
  model = tfm.load(tmp_path / "b" / "model.safetensors", device="CPU")
  np.testing.assert_array_equal(model.generator.weight.numpy(), straight.model.generator.weight.numpy())
  assert CharTokenizer.load(tmp_path / "b" / "vocab.json").chars == straight.tokenizer.chars


def test_a_seed_gives_the_same_run(learned):
  runs = [learned[0].losses[:2]]   # seed 0 (OPTIONS'), its first two steps
  for seed in (OPTIONS.seed, 6):
    trainer = Trainer("reverse", TINY, TrainOptions(**{**OPTIONS.__dict__, "seed": seed}), device="CPU", progress=False)
    for _ in range(2): trainer.train_step()
    runs.append(trainer.losses)
  assert runs[0] == runs[1] and runs[0] != runs[2]


def test_a_training_step_agrees_on_cpu_and_cl():
  if not backends.probe("CL").runs: pytest.skip(f"OpenCL does not run here: {backends.probe('CL').reason}")
  # one layer of each kind is every kernel a step has, at half the OpenCL compile time of two
  trainer = Trainer("reverse", {**TINY, "n_encoder_layers": 1, "n_decoder_layers": 1}, OPTIONS, device="CPU", progress=False)
  models = {"CPU": trainer.model, "CL": tfm.Transformer(trainer.config, device="CL", initialise=False)}
  tfm.io.weights.assign(unique_state(models["CL"]), _weights(trainer), "the CPU model's weights")
  batch = trainer.next_batch()
  results = {}
  for dev, model in models.items():
    params = unique_state(model)
    value = loss(model, *(Tensor(a, device=model.device) for a in batch))
    grads = value.gradient(*params.values())
    Tensor.realize(value, *grads)   # one schedule for them all
    results[dev] = value.item(), {name: g.numpy() for name, g in zip(params, grads)}
  (cpu_loss, cpu_grads), (cl_loss, cl_grads) = results["CPU"], results["CL"]
  assert abs(cpu_loss - cl_loss) < 1e-5 and cpu_loss > 1.0
  for name, g in cpu_grads.items():
    assert np.abs(g).max() > 0 or "bias" in name, name
    np.testing.assert_allclose(cl_grads[name], g, atol=1e-5, rtol=1e-4, err_msg=name)


def test_linear_trains_with_its_own_gradient_and_it_is_the_matmul_gradient():
  rng = np.random.default_rng(0)
  x, w, b, g = (rng.standard_normal(shape).astype(np.float32) for shape in ((2, 5, 8), (6, 8), (6,), (2, 5, 6)))
  layer = Linear(8, 6)
  layer.weight, layer.bias = Tensor(w, device="CPU"), Tensor(b, device="CPU")
  xt = Tensor(x, device="CPU")
  with Context(TRAINING=1):
    y = layer(xt)
    # under training the product is the function whose gradient tfm.nn.linear writes; outside it, tinygrad's Linear
    assert any(getattr(u.arg, "grad_fxn", None) is _matmul_wt_gradient for u in y.uop.toposort())
    dx, dw, db = y.gradient(xt, layer.weight, layer.bias, gradient=Tensor(g, device="CPU"))
  assert not any(getattr(u.arg, "grad_fxn", None) is _matmul_wt_gradient for u in layer(xt).uop.toposort())
  np.testing.assert_allclose(y.numpy(), x @ w.T + b, rtol=1e-5, atol=1e-5)
  g2, x2 = g.reshape(-1, 6).astype(np.float64), x.reshape(-1, 8).astype(np.float64)
  np.testing.assert_allclose(dw.numpy(), g2.T @ x2, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx.numpy(), (g2 @ w).reshape(x.shape), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(db.numpy(), g2.sum(0), rtol=1e-5, atol=1e-5)


def test_training_gradients_are_autograds():
  # the whole loss: gradients under training (tfm.nn.linear's function, as the trainer's step runs) against tinygrad's own
  # autograd of the same graph outside training (dropout is 0, so the two forward passes are the same)
  trainer = Trainer("reverse", TINY, OPTIONS, device="CPU", progress=False)
  params = unique_state(trainer.model)
  batch = [Tensor(a, device="CPU") for a in trainer.next_batch()]
  grads = {}
  for training in (1, 0):
    with Context(TRAINING=training):
      found = trainer.loss(*batch).gradient(*params.values())
      Tensor.realize(*found)  # one schedule for them all
      grads[training] = [g.numpy() for g in found]
  for name, ours, autograd in zip(params, grads[1], grads[0], strict=True):
    assert np.abs(autograd).max() > 0 or "bias" in name, name
    np.testing.assert_allclose(ours, autograd, rtol=1e-4, atol=1e-6, err_msg=name)


def test_the_step_clips_the_gradients_to_their_global_norm():
  # after one step Adam's first moment is (1 - b1) * g, so it shows the gradients the update used; OPTIONS clips to
  # norm 1, which the first batch's gradients (norm ~3.5) exceed
  trainer = Trainer("reverse", TINY, OPTIONS, device="CPU", progress=False)
  state = trainer.rng.bit_generator.state
  batch = [Tensor(a, device="CPU") for a in trainer.next_batch()]
  trainer.rng.bit_generator.state = state  # train_step draws this same batch
  found = trainer.loss(*batch).gradient(*trainer.params)
  Tensor.realize(*found)   # one schedule for them all
  grads = np.concatenate([g.numpy().reshape(-1) for g in found])
  scale = OPTIONS.clip_norm / (float(np.sqrt((grads.astype(np.float64) ** 2).sum())) + 1e-6)
  assert scale < 0.5   # the clip really bites
  trainer.train_step()
  np.testing.assert_allclose(trainer.opt.m[0].numpy(), (1 - trainer.opt.b1) * grads * scale, rtol=1e-4, atol=1e-9)


def test_bundled_model_is_accurate_on_held_out_dates():
  model = tfm.load(ASSETS / "dates.safetensors", device="CPU")
  tokenizer = CharTokenizer.load(ASSETS / "dates.vocab.json")
  task = get_task("dates")
  assert tokenizer.chars == task.tokenizer.chars
  pairs = task.examples(200, "test", seed=1)
  assert evaluate(model, tokenizer, pairs)["exact_match"] >= 0.98


# --- the pieces ---

def test_noam_schedule():
  d, warmup = 64, 100
  assert noam_lr(1, d, warmup) == pytest.approx(d ** -0.5 * warmup ** -1.5)
  assert noam_lr(warmup, d, warmup) == pytest.approx(d ** -0.5 * warmup ** -0.5)  # the peak
  assert noam_lr(50, d, warmup) == pytest.approx(noam_lr(warmup, d, warmup) / 2)  # linear rise
  assert noam_lr(4 * warmup, d, warmup) == pytest.approx(noam_lr(warmup, d, warmup) / 2)  # inverse square root decay
  assert noam_lr(7, d, warmup, scale=0.5) == pytest.approx(noam_lr(7, d, warmup) / 2)


def test_teacher_forcing_batch():
  tok = CharTokenizer("abc")
  src, tgt_in, labels = encode_batch(tok, [("ab", "ba"), ("c", "c")], 4, 3)
  np.testing.assert_array_equal(src, [[3, 4, 2, 0], [5, 2, 0, 0]])
  np.testing.assert_array_equal(labels, [[4, 3, 2], [5, 2, 0]])  # target + eos, pad after
  np.testing.assert_array_equal(tgt_in, [[1, 4, 3], [1, 5, 0]])  # bos + target shifted right
  with pytest.raises(InputError, match="longer than 4 -> 3"): encode_batch(tok, [("abcabc", "a")], 4, 3)


def test_config_takes_the_task_vocabulary(tmp_path):
  tok = get_task("dates").tokenizer
  cfg = resolve_config("small", tok)
  assert (cfg.vocab_size, cfg.pad_id, cfg.bos_id, cfg.eos_id) == (tok.vocab_size, 0, 1, 2)
  (tmp_path / "c.json").write_text(json.dumps({"d_model": 32, "n_heads": 2, "d_ff": 64}))
  assert resolve_config(str(tmp_path / "c.json"), tok).d_model == 32
  (tmp_path / "v.json").write_text(json.dumps({"vocab_size": 999}))
  with pytest.raises(ConfigError, match="vocab_size=999.*needs vocab_size=53"): resolve_config(str(tmp_path / "v.json"), tok)
  with pytest.raises(ConfigError, match="neither a preset"): resolve_config("huge", tok)


def test_bad_options_are_named():
  with pytest.raises(ConfigError, match="batch_size=0"): TrainOptions(batch_size=0)
  with pytest.raises(ConfigError, match="clip_norm"): TrainOptions(clip_norm=-1.0)
  with pytest.raises(ConfigError, match="max_len=8 is shorter"): Trainer("reverse", {"d_model": 8, "n_heads": 2, "max_len": 8})


def test_resume_without_a_checkpoint_says_so(tmp_path):
  with pytest.raises(WeightsError, match="no checkpoint in"): Trainer.resume(str(tmp_path))
  assert cli.main(["train", "--resume", "--out", str(tmp_path), "--task", "copy"]) == 2


def test_a_checkpoint_of_another_model_is_refused_by_name(learned):
  trainer, _ = learned
  state = trainer.optimizer_state()
  assert len(state) == 2 + 2 * len(trainer.params) and state["m.0"].shape == trainer.params[0].shape
  with pytest.raises(WeightsError, match=r"optimizer state v.3 is missing, parameter 3 has shape"):
    trainer.restore_optimizer({k: v for k, v in state.items() if k != "v.3"})
  with pytest.raises(WeightsError, match=r"optimizer state m.0 is of shape \(1, \d+\)"):
    trainer.restore_optimizer({**state, "m.0": state["m.0"].reshape(1, -1)})


def test_evaluating_a_vision_model_on_a_text_task_says_so(capsys):
  assert cli.main(["train", "--evaluate", str(ASSETS / "digits.safetensors"), "--task", "dates", "--device", "CPU"]) == 2
  assert "holds a VisionTransformer, not a text model; evaluate it with --task digits" in capsys.readouterr().err


def test_a_checkpoint_loaded_after_training_steps_is_what_the_next_steps_train(learned, tmp_path):
  trainer, _ = learned
  trainer.out = str(tmp_path)
  saved = trainer.save_checkpoint()
  before = _weights(trainer)
  for _ in range(2): trainer.train_step()   # the weights move on from the checkpoint ...
  trainer.load_checkpoint(saved)           # ... and come back: new buffers, which the next step must train
  loaded = _weights(trainer)
  for name, value in before.items(): np.testing.assert_array_equal(loaded[name], value, err_msg=name)
  trainer.train_step()
  assert any(not np.array_equal(value, before[name]) for name, value in _weights(trainer).items())
