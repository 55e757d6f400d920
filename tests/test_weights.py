"""tfm.save / tfm.load: the safetensors format (config in the metadata, ties stored once, float16/bfloat16 storage),
strict all-or-nothing loading with errors that name the tensor, and atomic writes."""
from __future__ import annotations

import json
import os
import weakref
from collections.abc import Mapping

import numpy as np
import pytest
from conftest import DEVICE, state_numpy
from safetensors import safe_open
from safetensors.numpy import save_file
from tinygrad import dtypes

import backends
from tfm.nn.base import unique_state
import tfm
from tfm.runtime import memory
from tfm.io import stored
from tfm.io import weights


@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("weights") / "tiny.safetensors")
  tfm.save(tiny_model, path, metadata={"task": "copy"})
  return path


@pytest.fixture(scope="module")
def loaded(saved) -> tfm.Transformer:
  return tfm.load(saved, device=DEVICE)


def rewrite(src: str, dst: str, change) -> str:
  """Copy a tfm file with its arrays and metadata passed through change(arrays, metadata) first, as another tool
  would write it: without the checksum (a changed file that kept it is refused whatever changed: test_robustness)."""
  with safe_open(src, framework="numpy") as f:
    arrays, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
  meta.pop(stored.CHECKSUM)
  change(arrays, meta)
  save_file(arrays, dst, metadata=meta)
  return dst


def test_round_trip_restores_every_weight_exactly(tiny_model, loaded):
  before, after = state_numpy(tiny_model), state_numpy(loaded)
  assert before.keys() == after.keys()
  for name in before: np.testing.assert_array_equal(after[name], before[name], err_msg=name)
  assert loaded.config == tiny_model.config


def test_tied_matrix_is_stored_once_and_tied_again_on_load(saved, loaded):
  with safe_open(saved, framework="numpy") as f: keys = set(f.keys())
  assert "src_embed.weight" in keys and not keys & {"tgt_embed.weight", "generator.weight"}
  assert loaded.tgt_embed.weight is loaded.src_embed.weight and loaded.generator.weight is loaded.src_embed.weight


def test_config_and_format_version_travel_in_the_metadata(saved, tiny_model):
  with safe_open(saved, framework="numpy") as f: meta = f.metadata()
  assert meta["tfm.format_version"] == "1" and meta["tfm.dtype"] == "float32" and meta["tfm.kind"] == "transformer"
  assert tfm.TransformerConfig.from_dict(json.loads(meta["tfm.config"])) == tiny_model.config
  assert weights.read(saved).metadata == {"task": "copy"}


def test_generation_config_travels_in_the_metadata(tiny_model, tmp_path):
  path = tmp_path / "g.safetensors"
  arrays = {name: t.numpy() for name, t in unique_state(tiny_model).items()}
  weights.write(path, arrays, tiny_model.config, generation_config={"num_beams": 4, "bad_words_ids": [[0]]})
  assert weights.read(path).generation_config == {"num_beams": 4, "bad_words_ids": [[0]]}


def test_reserved_or_non_string_metadata_is_refused(tiny_model, tmp_path):
  with pytest.raises(tfm.WeightsError, match="reserved"): tfm.save(tiny_model, tmp_path / "a.safetensors", metadata={"tfm.x": "1"})
  with pytest.raises(tfm.WeightsError, match="str -> str"): tfm.save(tiny_model, tmp_path / "b.safetensors", metadata={"step": 3})
  assert os.listdir(tmp_path) == []


def test_untied_model_stores_each_matrix(tiny_config, tmp_path):
  config = tiny_config.replace(tie_embeddings=False, output_bias=True, n_encoder_layers=0, n_decoder_layers=0)
  model = tfm.Transformer(config, device=DEVICE)
  path = tmp_path / "untied.safetensors"
  tfm.save(model, path)
  arrays = weights.read(path).arrays
  assert {"src_embed.weight", "tgt_embed.weight", "generator.weight", "generator.bias"} <= arrays.keys()
  assert not np.array_equal(arrays["src_embed.weight"], arrays["generator.weight"])


def test_float16_storage_halves_the_file_and_rounds_each_value(tiny_model, saved, tmp_path):
  path = tmp_path / "half.safetensors"
  tfm.save(tiny_model, path, dtype="float16")
  assert os.path.getsize(path) < 0.55 * os.path.getsize(saved)
  with safe_open(path, framework="numpy") as f: assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
  stored, exact = weights.read(path).arrays, state_numpy(tiny_model)
  for name, value in stored.items():
    np.testing.assert_array_equal(value, exact[name].astype(np.float16).astype(np.float32), err_msg=name)


def test_values_beyond_float16_are_refused_not_stored_as_inf(tiny_model, tmp_path):
  arrays = {name: t.numpy() for name, t in unique_state(tiny_model).items()}
  arrays["encoder.layers.0.ffn.fc2.bias"] = arrays["encoder.layers.0.ffn.fc2.bias"] + 7e4
  with pytest.raises(tfm.WeightsError, match="encoder.layers.0.ffn.fc2.bias has values up to 7e\\+04, beyond what float16 holds"):
    weights.write(tmp_path / "h.safetensors", arrays, tiny_model.config, dtype="float16")
  weights.write(tmp_path / "b.safetensors", arrays, tiny_model.config, dtype="bfloat16")  # bfloat16 has float32's range


def test_load_can_cast_the_model_to_float16(tiny_model, saved):
  model = tfm.load(saved, device=DEVICE, dtype="float16")
  assert {p.dtype for p in model.parameters()} == {dtypes.float16}


def test_bfloat16_storage_is_genuine_bf16_rounded_to_nearest_even(tiny_model, tmp_path):
  path = tmp_path / "bf16.safetensors"
  tfm.save(tiny_model, path, dtype="bfloat16")
  with safe_open(path, framework="numpy") as f: assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
  stored, exact = weights.read(path).arrays, state_numpy(tiny_model)
  for name, value in stored.items():  # 8 significant bits, rounded to nearest: relative error at most 2^-8
    assert np.all(np.abs(value - exact[name]) <= np.abs(exact[name]) * 2.0 ** -8), name


def test_bfloat16_rounding_ties_go_to_even():
  one = np.float32(1.0)
  halfway_down = np.array([one + 2.0 ** -8, one + 3 * 2.0 ** -8, -(one + 2.0 ** -8)], dtype=np.float32)
  widened = memory.widen_bfloat16(memory.bfloat16_bits(halfway_down))
  np.testing.assert_array_equal(widened, np.array([1.0, 1.0 + 2.0 ** -6, -1.0], dtype=np.float32))


def test_bfloat16_bits_match_pytorch():
  torch = pytest.importorskip("torch", reason="PyTorch not installed: the bf16 rounding is checked against it only when present")
  x = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 100
  expected = torch.from_numpy(x).bfloat16().view(torch.int16).numpy().view(np.uint16)
  np.testing.assert_array_equal(memory.bfloat16_bits(x), expected)


# --- bad files: a WeightsError that names the problem, and nothing loaded -----------------------------------------

@pytest.mark.parametrize("change, message", [
  (lambda a, m: a.pop("encoder.layers.1.ffn.fc2.bias"), "missing tensor.*encoder.layers.1.ffn.fc2.bias"),
  (lambda a, m: a.update({"decoder.extra.weight": np.zeros(3, np.float32)}), "unexpected tensor.*decoder.extra.weight"),
  (lambda a, m: a.update({"generator.weight": a["src_embed.weight"]}), "unexpected tensor.*generator.weight"),
  (lambda a, m: a.update({"encoder.layers.0.ffn.fc1.weight": np.zeros((64, 31), np.float32)}),
   r"encoder.layers.0.ffn.fc1.weight has shape \(64, 31\), the config expects \(64, 32\)"),
  (lambda a, m: a["decoder.layers.1.final_layer_norm.bias"].__setitem__(3, np.nan), "decoder.layers.1.final_layer_norm.bias has 1 NaN/Inf"),
  (lambda a, m: a.update({"src_embed.weight": a["src_embed.weight"].astype(np.float16)}), "src_embed.weight is stored as F16.*float32"),
  (lambda a, m: a.update({"encoder.layer_norm.weight": np.ones(32, np.int32)}), "dtype I32"),
  (lambda a, m: m.pop("tfm.format_version"), "no tfm.format_version"),
  (lambda a, m: m.update({"tfm.format_version": "2"}), "format version 2, newer than this tfm reads"),
  (lambda a, m: m.update({"tfm.config": "{not json"}), "tfm.config .*not a valid TransformerConfig"),
], ids=["missing", "unexpected", "tie-stored-twice", "shape", "nan", "dtype", "integer", "no-version", "newer-version", "bad-config"])
def test_bad_file_is_refused_and_model_left_untouched(tiny_model, saved, tmp_path, change, message):
  bad = rewrite(saved, str(tmp_path / "bad.safetensors"), change)
  before = state_numpy(tiny_model)
  with pytest.raises(tfm.WeightsError, match=message):
    weights.load_into(tiny_model, bad)
  after = state_numpy(tiny_model)
  for name in before: np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_load_checks_names_before_using_the_model(saved, tmp_path):
  bad = rewrite(saved, str(tmp_path / "bad.safetensors"), lambda a, m: a.pop("decoder.layers.0.encoder_attn.v_proj.bias"))
  with pytest.raises(tfm.WeightsError, match="missing tensor.*decoder.layers.0.encoder_attn.v_proj.bias"):
    tfm.load(bad, device=DEVICE)


@pytest.mark.parametrize("damage, message", [
  (lambda data: data[:-100], "not fully covered"),
  (lambda data: b"\xff" * 8 + data[8:], "header too large"),
  (lambda data: b"", "header too small"),
], ids=["truncated", "bad-header", "empty"])
def test_damaged_file_is_a_weights_error(saved, tmp_path, damage, message):
  path = tmp_path / "damaged.safetensors"
  path.write_bytes(damage(open(saved, "rb").read()))
  with pytest.raises(tfm.WeightsError, match=f"not a readable safetensors.*{message}"): weights.read(path)


def test_missing_file_and_directory_are_weights_errors(tmp_path):
  with pytest.raises(tfm.WeightsError, match="does not exist"): tfm.load(tmp_path / "nope.safetensors")
  with pytest.raises(tfm.WeightsError, match="is a directory"): tfm.load(tmp_path)


def test_another_config_is_refused_by_load_into(tiny_config, saved):
  other = tfm.Transformer(tiny_config.replace(n_encoder_layers=0, n_decoder_layers=0), device=DEVICE)
  with pytest.raises(tfm.WeightsError, match="n_encoder_layers: model 0, file 2, n_decoder_layers: model 0, file 2"):
    weights.load_into(other, saved)


def test_unknown_load_dtype_is_refused(saved):
  with pytest.raises(tfm.WeightsError, match="dtype='int4' is not supported"): tfm.load(saved, dtype="int4")


def test_non_finite_weights_are_not_saved(tiny_model, tmp_path):
  bias = tiny_model.encoder.layers[0].ffn.fc1.bias
  good = bias.numpy()
  bias.assign(bias * np.inf).realize()
  try:
    with pytest.raises(tfm.WeightsError, match="encoder.layers.0.ffn.fc1.bias has NaN or Inf"):
      tfm.save(tiny_model, tmp_path / "m.safetensors")
  finally:
    bias.assign(good).realize()
  assert os.listdir(tmp_path) == []


# --- atomic writes ------------------------------------------------------------------------------------------------

def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tiny_model, saved, tmp_path, monkeypatch):
  path = tmp_path / "model.safetensors"
  path.write_bytes(open(saved, "rb").read())

  def crash(specs, filename, metadata=None):
    with open(filename, "wb") as f: f.write(b"half a file")
    raise OSError("disk full")
  monkeypatch.setattr(stored, "serialize_file", crash)
  with pytest.raises(OSError, match="disk full"): tfm.save(tiny_model, path)
  assert path.read_bytes() == open(saved, "rb").read()
  assert os.listdir(tmp_path) == ["model.safetensors"]


def test_written_file_gets_ordinary_permissions(saved):
  umask = os.umask(0o022); os.umask(umask)
  assert os.stat(saved).st_mode & 0o777 == 0o666 & ~umask


class Handout(Mapping):
  """Arrays handed out one by one, counting how many of them are alive at once (numpy arrays take weak references)."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays, self.alive, self.most = arrays, [], 0

  def __getitem__(self, name: str) -> np.ndarray:
    a = self.arrays[name].copy()
    self.alive = [r for r in self.alive if r() is not None] + [weakref.ref(a)]
    self.most = max(self.most, len(self.alive))
    return a

  def __iter__(self): return iter(self.arrays)
  def __len__(self): return len(self.arrays)


@pytest.mark.parametrize("device", ["CPU", "CL"])
def test_loading_holds_one_array_at_a_time(tiny_model, device):
  # OpenCL keeps a copy's host array until its queue has run: without draining it, every array was alive at the end
  if not backends.probe(device).runs: pytest.skip(f"{device} does not run here")
  arrays = Handout({name: t.numpy() for name, t in unique_state(tiny_model).items()})
  model = tfm.Transformer(tiny_model.config, device=device, initialise=False)
  weights.assign(unique_state(model), arrays, "handed out")
  assert len(arrays) > 20 and arrays.most <= 2
  for name, t in unique_state(model).items(): np.testing.assert_array_equal(t.numpy(), arrays.arrays[name])


def test_a_file_replaced_after_it_was_checked_is_refused_not_read_half_new(tiny_model, tmp_path):
  path, other = tmp_path / "m.safetensors", tmp_path / "other.safetensors"
  tfm.save(tiny_model, path)
  wf = weights.read(path)
  tfm.save(tiny_model, other, metadata={"another": "file"})
  os.replace(other, path)
  with pytest.raises(tfm.WeightsError, match="changed while it was being read; load it again"): wf.arrays["src_embed.weight"]
