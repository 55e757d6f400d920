"""Several devices: choosing them (backends.select), laying a model over them (tfm.runtime.placement: data and tensor parallel),
and what it computes there: the one-device model's numbers, ids and training steps, on two CPU devices ("CPU*2")."""
from __future__ import annotations

import numpy as np
import pytest
from tinygrad import Tensor

import backends
import tfm
from backends.registry import RUNS, BackendInfo, SelectionError
from tfm.io import weights
from tfm.errors import InputError
from tfm.runtime.memory import download, to_device, upload

TWO = ("CPU", "CPU:1")
SRC = np.array([[5, 9, 12, 33, 2, 0, 0], [7, 8, 9, 10, 11, 40, 2], [6, 6, 30, 2, 0, 0, 0], [40, 41, 42, 43, 44, 45, 2]], np.int32)
TGT = np.array([[1, 14, 15, 16, 17], [1, 20, 21, 22, 23], [1, 3, 4, 5, 6], [1, 30, 31, 32, 33]], np.int32)


@pytest.fixture(scope="module")
def split(tiny_model):
  """The tiny model on two CPU devices, data parallel and tensor parallel, with the one-device model's weights."""
  arrays = weights.state_arrays(tiny_model)
  return {mode: weights.build(tiny_model.config, arrays, "the tiny model", "CPU*2", None, mode) for mode in ("data", "tensor")}


# --- choosing the devices ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["CPU*2", "cpu:0,cpu:1", ("CPU:0", "CPU:1"), ("CPU", "CPU:1"), ["CPU:0", "CPU:1"]])
def test_every_spelling_of_two_cpu_devices_selects_the_same_two(spelling):
  info = backends.select(spelling)
  assert (info.name, info.devices, info.tensor_device, info.label) == ("CPU", TWO, TWO, "CPU*2")


def test_one_indexed_device_is_that_device_alone():
  assert backends.select("CPU:1").tensor_device == "CPU:1" and backends.select(("CPU:0",)).tensor_device == "CPU"


def test_a_tuple_of_backend_names_is_still_a_priority_list():
  assert backends.select(("CPU", "CL")).devices == ()


def test_a_label_selects_the_same_devices_again():
  info = backends.select("CPU:1,CPU:3")
  assert info.label == "CPU:1,CPU:3" and backends.select(info.label).devices == ("CPU:1", "CPU:3")


@pytest.mark.parametrize("spelling, says", [
  ("CPU*0", "count of at least 1"), ("CPU*two", "count of at least 1"), ("FOO*2", "unknown backend 'FOO'"),
  (("CPU", "FOO"), "unknown backend 'FOO'"), ("CPU:0,CL:0", "all be of one backend"), (("CPU", "CL:1"), "all be of one backend"),
  ("CPU:0,CPU", "mixes devices"), ("CPU:0,CPU:0", "names a device twice"),
])
def test_a_wrong_device_list_is_refused_with_what_to_give(spelling, says):
  with pytest.raises(SelectionError, match=says): backends.select(spelling)


def test_an_accelerator_index_beyond_what_the_probe_counted_is_refused(monkeypatch):
  import sys
  select_module = sys.modules["backends.select"]   # the module (backends.select is also its function)
  monkeypatch.setattr(select_module, "probe", lambda name, timeout: BackendInfo("CUDA", "CUDA", RUNS, "GPU", count=2))
  assert select_module.select("CUDA*2").devices == ("CUDA", "CUDA:1")
  with pytest.raises(SelectionError, match=r"no device CUDA:2: CUDA has 2 devices here \(CUDA:0, CUDA:1\)"):
    select_module.select("CUDA:0,CUDA:2")


# --- tensors over several devices ------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [None, 0, 1])
def test_a_host_array_goes_to_two_devices_and_back_whole_or_split(axis):
  a = np.arange(24, dtype=np.float32).reshape(4, 6)
  t = to_device(a, TWO, axis=axis)
  assert t.device == TWO and t.uop.axis == axis and np.array_equal(download(t), a)
  upload(t, a * 2)
  assert np.array_equal(download(t), a * 2) and np.array_equal((t + 1).numpy(), a * 2 + 1)


def test_an_array_that_does_not_split_evenly_is_refused():
  with pytest.raises(ValueError, match="cannot split axis 0 of shape \\(3, 2\\) evenly over 2 devices"):
    to_device(np.zeros((3, 2)), TWO, axis=0)


# --- the model -------------------------------------------------------------------------------------------------------

def test_tensor_parallel_splits_projections_by_heads_and_ffn_columns(split):
  layer = split["tensor"].encoder.layers[0]
  axes = {name: getattr(layer.self_attn, name).weight.uop.axis for name in ("q_proj", "k_proj", "v_proj", "out_proj")}
  assert axes == {"q_proj": 0, "k_proj": 0, "v_proj": 0, "out_proj": 1}
  assert (layer.ffn.fc1.weight.uop.axis, layer.ffn.fc1.bias.uop.axis, layer.ffn.fc2.weight.uop.axis, layer.ffn.fc2.bias.uop.axis) == (0, 0, 1, None)
  assert split["tensor"].src_embed.weight.uop.axis is None and split["data"].encoder.layers[0].ffn.fc1.weight.uop.axis is None


@pytest.mark.parametrize("mode", ["data", "tensor"])
def test_logits_on_two_devices_equal_one_devices(tiny_model, split, mode):
  out = split[mode](SRC, TGT)
  assert out.device == TWO
  assert np.abs(out.numpy() - tiny_model(SRC, TGT).numpy()).max() <= 1e-5


def test_data_parallel_splits_an_even_batch_by_rows_and_runs_an_odd_one_whole(tiny_model, split):
  model = split["data"]
  assert model.ids(SRC).uop.axis == 0 and model.ids(SRC[:3]).uop.axis is None
  assert np.abs(model(SRC[:3], TGT[:3]).numpy() - tiny_model(SRC[:3], TGT[:3]).numpy()).max() <= 1e-5


@pytest.mark.parametrize("mode", ["data", "tensor"])
@pytest.mark.parametrize("beam", [1, 4])
def test_generation_on_two_devices_gives_one_devices_ids_and_scores(tiny_model, split, mode, beam):
  ids, scores = tfm.generate(split[mode], SRC, beam_size=beam, max_len=12, return_scores=True)
  want_ids, want_scores = tfm.generate(tiny_model, SRC, beam_size=beam, max_len=12, return_scores=True)
  assert np.array_equal(ids, want_ids) and np.abs(scores - want_scores).max() <= 1e-5


def test_a_data_parallel_decode_step_replays_each_devices_kernels_on_its_own_thread(split, monkeypatch):
  import threading

  from tfm.runtime import replay
  from tfm.generation import sessions_of
  tfm.generate(split["data"], SRC, beam_size=4, max_len=12)
  session = next(s for s in sessions_of(split["data"]) if s.beam == 4 and s.rows == 4)
  step = session.steps[min(session.steps)].beam
  assert len(step.lanes) == 2 and {lane[0][5] for lane in step.lanes} == set(TWO)
  seen, launch = {}, replay._launch
  def recorded(launches, var_vals):
    seen[launches[0][5]] = threading.current_thread()
    launch(launches, var_vals)
  monkeypatch.setattr(replay, "_launch", recorded)
  step(3)
  assert set(seen) == set(TWO) and len(set(seen.values())) == 2 and threading.main_thread() not in seen.values()


def test_a_step_over_two_devices_is_stored_and_relaunched_per_device_on_new_buffers(tmp_path, monkeypatch):
  from tinygrad import Context

  from tfm.runtime import cache
  from tfm.runtime.replay import CompiledStep
  monkeypatch.setenv("TFM_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.delenv("TFM_CACHE", raising=False)
  def doubling():
    x, out = to_device(np.arange(8, dtype=np.float32).reshape(4, 2), TWO, axis=0), to_device(np.zeros((4, 2), np.float32), TWO, axis=0)
    def fn(): out.assign(x * 2 + 1).realize()
    return CompiledStep(fn, None, lambda: Context(DEV="CPU"), {"test": "two devices"}, lambda: {"x": x, "out": out}, "CPU"), x, out
  first, _, _ = doubling()
  first()
  assert len(first.lanes) == 2 and cache.info().entries == 1
  again, x, out = doubling()   # new buffers under the same names, as a new process has
  upload(x, np.full((4, 2), 10, np.float32))
  again()
  assert again.jit.captured is None and len(again.lanes) == 2 and np.array_equal(download(out), np.full((4, 2), 21, np.float32))


def test_an_int8_model_on_two_devices_equals_its_one_device_self(tiny_model):
  arrays = weights.state_arrays(tiny_model)
  one = weights.build(tiny_model.config, arrays, "tiny", "CPU", "int8")
  two = weights.build(tiny_model.config, arrays, "tiny", "CPU*2", "int8", "tensor")
  assert two.encoder.layers[0].ffn.fc1.scale.uop.axis == 0 and two.encoder.layers[0].ffn.fc2.scale.uop.axis is None
  assert np.abs(two(SRC, TGT).numpy() - one(SRC, TGT).numpy()).max() <= 1e-5


def test_a_split_model_saves_the_weights_it_was_given_and_loads_back_split(tiny_model, split, tmp_path):
  path = str(tmp_path / "split.safetensors")
  tfm.save(split["tensor"], path)
  assert all(np.array_equal(a, b) for a, b in zip(weights.state_arrays(tiny_model).values(), weights.state_arrays(split["tensor"]).values()))
  again = tfm.load(path, device="CPU*2", parallel="tensor")
  assert again.parallel == "tensor" and np.abs(again(SRC, TGT).numpy() - tiny_model(SRC, TGT).numpy()).max() <= 1e-5


def test_the_bundled_translator_on_two_devices_translates_as_on_one():
  texts = ["March 3, 2011", "12/01/1999", "the 5th of may 2020", "2001-02-03"]
  assert tfm.Translator.bundled(device="CPU*2").translate(texts) == tfm.Translator.bundled(device="CPU").translate(texts)


def test_the_default_mode_is_data_parallel_below_the_size_bound(tiny_config):
  from tfm.runtime import placement
  assert placement.choose(None, tiny_config, TWO) == "data"
  assert placement.choose(None, tfm.TransformerConfig.preset("big").replace(vocab_size=1_000_000), TWO) == "tensor"   # > 4 GB of float32


@pytest.mark.parametrize("make, says", [
  (lambda c: tfm.Transformer(c.replace(n_heads=4, d_model=64), device="CPU*3", parallel="tensor"), "n_heads=4, which does not divide by 3"),
  (lambda c: tfm.Transformer(c, device="CPU", parallel="data"), "needs several devices"),
  (lambda c: tfm.Transformer(c, device="CPU*2", parallel="pipeline"), "not a mode"),
  (lambda c: tfm.VisionTransformer(tfm.VisionConfig.preset("digits"), device="CPU*2"), "runs on one device"),
])
def test_a_split_that_cannot_work_is_refused_with_the_fix(tiny_config, make, says):
  with pytest.raises(InputError, match=says): make(tiny_config)


# --- training --------------------------------------------------------------------------------------------------------

def test_data_parallel_training_follows_the_one_device_run():
  from test_train import OPTIONS, TINY
  from tfm.training.trainer import Trainer
  one_layer = {**TINY, "n_encoder_layers": 1, "n_decoder_layers": 1}   # half the kernels of the tiny model to compile
  runs = {}
  for device in ("CPU", "CPU*2"):
    trainer = Trainer("reverse", one_layer, OPTIONS, device=device, progress=False)
    runs[device] = ([trainer.train_step() for _ in range(2)], weights.state_arrays(trainer.model))
  assert runs["CPU*2"][0] == pytest.approx(runs["CPU"][0], abs=1e-5)
  # Adam divides each gradient by its own magnitude: a near-zero gradient's rounding can move a weight by up to the
  # learning rate (~5e-5 in these first warm-up steps), so the weights agree to that, the losses to float32 rounding
  assert max(np.abs(runs["CPU"][1][k] - runs["CPU*2"][1][k]).max() for k in runs["CPU"][1]) <= 2e-4


def test_tfm_compare_checks_a_model_split_over_two_cpu_devices_against_the_oracle():
  from tfm.apps import compare
  from tfm.apps import subjects
  report = compare.run(subjects.tiny_subject(seed=1), "CPU,CPU*2", repeat=0, progress=False)
  split_run = report.runs[1]
  assert report.ok and split_run.backend.label == "CPU*2" and split_run.all_identical
  assert split_run.max_error <= compare.TOLERANCE["float32"] and "CPU*2 (tensor parallel)" in report.table()   # batch 3: heads split


def test_tfm_compare_compile_checks_a_split_model_for_two_gpus_it_cannot_run():
  from backends.kernels import nvrtc_path
  from tfm.apps import compare
  from tfm.apps import subjects
  cuda = backends.probe("CUDA")
  if cuda.status != backends.COMPILE_ONLY or not nvrtc_path(): pytest.skip(f"CUDA is {cuda.status} here")
  (run,) = compare.run(subjects.tiny_subject(seed=1), "CUDA*2", repeat=0, progress=False).runs
  assert run.status == "compile-checked" and run.backend.devices == ("CUDA", "CUDA:1")
  assert "compiled to PTX for sm_80 by NVRTC" in run.note and int(run.note.split()[0]) >= 10


def test_training_on_two_devices_with_dropout_is_refused_rather_than_repeating_its_masks():
  from tfm.training.trainer import TrainOptions, Trainer
  with pytest.raises(InputError, match="needs dropout=0"): Trainer("dates", "tiny", TrainOptions(steps=1, batch_size=8), device="CPU*2")


def test_a_tensor_parallel_model_is_not_trained_and_the_trainer_splits_the_batch_instead(split):
  from tfm.training.step import TrainStep
  with pytest.raises(InputError, match="tensor-parallel model cannot be trained"): TrainStep(split["tensor"], None, 0.1, ((8, 5),))


def test_the_beam_reorder_keeps_an_overflowed_row_from_its_sentences_other_beams():
  from tfm.nn.attention import KVCache
  cache = KVCache(4, 1, 3, 2, "CPU", group=2)
  kv = np.zeros(cache.kv.shape, np.float32)
  kv[:, 1, :, 0] = np.inf   # row 1 overflowed (a float16 cache can)
  upload(cache.kv, kv)
  out = cache._reordered(Tensor([0, 0, 3, 2], device="CPU"), 2).numpy()   # nobody continues row 1
  assert np.isfinite(out).all()
