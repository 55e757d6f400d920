"""The Vision Transformer: Hugging Face ViT checkpoints imported to 1e-4 of transformers (fixtures made by
tests/make_fixtures.py), the float64 oracle, the bundled digits classifier's held-out accuracy, `tfm classify`, the
attention rollout, `tfm compare --model vit`, and the errors for what is not supported or not an image.

One model per fixture and per module keeps the kernels cached: tinygrad compiles each new shape once."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import DEVICE, copied_checkpoint
from tinygrad import Context

import backends
import tfm
from tfm.apps import compare
from tfm.io import weights
from tfm.apps.classifier import Classifier
from tfm.files import BUNDLED_CLASSIFIER
from tfm.cli import main
from tfm.config import VISION_PRESETS
from tfm.apps.image_attention import attention_of, image_attention, rollout
from tfm.interop import convert_vit
from tfm.reference import VisionReference
from tfm.training.digits import DIGIT_MAX, digits_pixels

FIXTURES = Path(__file__).parent / "fixtures"
TOLERANCE = compare.TOLERANCE["float32"]
VARIANTS = ["c1", "c3", "model_c3"]
ACCURACY = 0.97   # the bundled classifier's promise on its held-out split (tfm/assets/README.md)
PNG = b"\x89PNG\r\n\x1a\n"


def fixture_io(variant: str) -> dict[str, np.ndarray]:
  return dict(np.load(FIXTURES / f"vit_{variant}.npz"))


@pytest.fixture(scope="module")
def imported() -> dict[str, tfm.VisionTransformer]:
  return {v: tfm.from_pretrained(FIXTURES / f"vit_{v}", device=DEVICE) for v in VARIANTS}


@pytest.fixture(scope="module")
def digits() -> tuple[Classifier, np.ndarray, np.ndarray]:
  """The bundled classifier with the held-out images (N, 8, 8; 0..16) and labels it never saw in training."""
  held_out = np.load(FIXTURES / "digits_test.npz")
  return Classifier.bundled(DEVICE), held_out["images"].astype(np.float32), held_out["labels"].astype(np.int64)


def write_png(path: Path, image: np.ndarray) -> Path:
  """A digits image (8, 8; 0..16) as an 8-bit greyscale PNG, white ink on black as load_digits stores it."""
  from PIL import Image
  Image.fromarray(np.round(image / DIGIT_MAX * 255).astype(np.uint8)).save(path)
  return path


# --- Hugging Face import ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_features_match_transformers(imported, variant):
  io = fixture_io(variant)
  assert np.abs(imported[variant].features(io["pixels"]).numpy() - io["last_hidden_state"]).max() <= TOLERANCE


@pytest.mark.parametrize("variant", ["c1", "c3"])
def test_logits_match_transformers(imported, variant):
  io = fixture_io(variant)
  assert np.abs(io["logits"]).max() > 0.5   # the comparison means something only if the logits are not all tiny
  assert np.abs(imported[variant](io["pixels"]).numpy() - io["logits"]).max() <= TOLERANCE


def test_config_json_is_read_as_the_checkpoint_says(imported):
  c1, c3, base = (imported[v].config for v in VARIANTS)
  assert (c1.num_channels, c1.image_size, c1.patch_size, c1.num_labels, c1.activation, c1.layer_norm_eps) == (1, 8, 4, 3, "gelu", 1e-12)
  assert c3.labels == ("cat", "dog", "bird", "fish", "frog") and c3.activation == "relu" and c3.layer_norm_eps == 1e-6
  assert base.num_labels == 0 and imported["model_c3"].classifier is None
  biases = convert_vit(FIXTURES / "vit_model_c3").arrays
  assert not np.any(biases["encoder.layers.1.self_attn.k_proj.bias"])   # qkv_bias: false -> zero biases


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_oracle_agrees_with_transformers_and_tfm(imported, variant):
  io, conv = fixture_io(variant), convert_vit(FIXTURES / f"vit_{variant}")
  oracle = VisionReference(conv.arrays, conv.config.to_dict())
  assert np.abs(oracle.features(io["pixels"]) - io["last_hidden_state"]).max() <= TOLERANCE
  np.testing.assert_allclose(np.stack(oracle.attention), io["attentions"], atol=1e-6)   # every layer's softmax weights
  if "logits" in io: assert np.abs(oracle.logits(io["pixels"]) - io["logits"]).max() <= TOLERANCE
  assert np.abs(imported[variant].features(io["pixels"]).numpy() - oracle.features(io["pixels"])).max() <= TOLERANCE


def vit_copy(tmp_path: Path, change=None, config_change=None, variant: str = "c3") -> Path:
  """A ViT fixture folder copied, its tensors passed through change(arrays) and config.json through config_change."""
  return copied_checkpoint(FIXTURES / f"vit_{variant}", tmp_path / "vit", change, config_change)


@pytest.mark.parametrize("change, config_change, message", [
  (lambda a: a.update({"vit.pooler.dense.weight": np.zeros((16, 16), np.float32), "vit.pooler.dense.bias": np.zeros(16, np.float32)}),
   None, "has a pooler"),
  (lambda a: a.update({"vit.embeddings.mask_token": np.zeros((1, 1, 16), np.float32)}), None, "mask token"),
  (None, lambda hf: hf.update({"image_size": 16}), r"made for 9 patches.*does not interpolate position embeddings"),
  (None, lambda hf: hf.update({"hidden_act": "gelu_new"}), "hidden_act='gelu_new'"),
  (None, lambda hf: hf.update({"image_size": [12, 16]}), r"image_size=\[12, 16\]; tfm's ViT takes square images"),
  (None, lambda hf: hf.update({"patch_size": 5}), "image_size=12 is not a multiple of patch_size=5"),
  (None, lambda hf: hf.update({"architectures": ["ViTForMaskedImageModeling"]}), "ViTForMaskedImageModeling checkpoint"),
  (lambda a: a.pop("vit.encoder.layer.1.attention.attention.value.bias"), None, "missing tensor.*layer.1.attention.attention.value.bias"),
  (lambda a: a.update({"vit.encoder.layer.0.extra.weight": np.zeros(3, np.float32)}), None, "unexpected tensor.*layer.0.extra.weight"),
  (lambda a: a.update({"classifier.bias": np.zeros(4, np.float32)}), None, r"classifier.bias has shape \(4,\).*\(5,\)"),
], ids=["pooler", "mask-token", "other-image-size", "activation", "rectangular", "patch-tiling", "architecture", "missing",
        "unexpected", "head-shape"])
def test_checkpoint_that_tfm_does_not_compute_is_refused(tmp_path, change, config_change, message):
  with pytest.raises(tfm.WeightsError, match=message):
    tfm.from_pretrained(vit_copy(tmp_path, change, config_change))


def test_from_pretrained_picks_the_importer_by_model_type(tmp_path, imported):
  assert isinstance(imported["c1"], tfm.VisionTransformer)
  assert isinstance(tfm.from_pretrained(FIXTURES / "marian_tiny", device=DEVICE), tfm.Transformer)
  with pytest.raises(tfm.WeightsError, match="describes a 'prophetnet' model"):
    tfm.from_pretrained(vit_copy(tmp_path, config_change=lambda hf: hf.update({"model_type": "prophetnet"})))


def test_convert_then_load_gives_the_same_logits(imported, tmp_path, capsys):
  out = tmp_path / "vit.safetensors"
  assert main(["convert", str(FIXTURES / "vit_c3"), "--out", str(out)]) == 0
  summary = capsys.readouterr().out
  assert "(ViT checkpoint)" in summary and "patch_embed.weight (reshaped to (d, C*p*p))" in summary
  loaded, io = tfm.load(out, device=DEVICE), fixture_io("c3")
  assert isinstance(loaded, tfm.VisionTransformer) and loaded.config == imported["c3"].config
  np.testing.assert_array_equal(loaded(io["pixels"]).numpy(), imported["c3"](io["pixels"]).numpy())


def test_vit_b16_has_the_papers_size():
  with Context(DEV="NULL"):
    model = tfm.VisionTransformer(tfm.VisionConfig.preset("vit-b16"), device=None, initialise=False)
  assert model.num_parameters() == 86_567_656   # google/vit-base-patch16-224's count, head included
  assert {k: (v["d_model"], v["n_heads"], v["n_layers"]) for k, v in VISION_PRESETS.items() if k.startswith("vit-") and k != "vit-tiny"} \
    == {"vit-ti16": (192, 3, 12), "vit-s16": (384, 6, 12), "vit-b16": (768, 12, 12), "vit-l16": (1024, 16, 24)}


@pytest.mark.parametrize("pixels, message", [
  (np.zeros((1, 1, 12, 12), np.float32), r"has 1 channels, the model takes 3"),
  (np.zeros((1, 3, 8, 8), np.float32), r"images are 8x8, the model takes 12x12"),
  (np.full((1, 3, 12, 12), np.nan, np.float32), "432 NaN or Inf values"),
  (np.zeros((3, 12, 12), np.float32), r"shape \(3, 12, 12\); wrap a single image as pixels\[None\]"),
  (np.zeros((0, 3, 12, 12), np.float32), "empty batch"),
  (np.zeros((1, 3, 12, 12), bool), "must be numbers"),
], ids=["channels", "size", "nan", "unbatched", "empty", "dtype"])
def test_bad_pixels_are_input_errors(imported, pixels, message):
  with pytest.raises(tfm.InputError, match=message): imported["c3"](pixels)


# --- the bundled digits classifier ----------------------------------------------------------------------------------

def test_bundled_classifier_is_small_and_loads_as_a_vit():
  assert Path(BUNDLED_CLASSIFIER).stat().st_size < 1_000_000
  model = tfm.load(BUNDLED_CLASSIFIER, device=DEVICE)
  assert isinstance(model, tfm.VisionTransformer) and model.config.labels == tuple("0123456789")


def test_bundled_classifier_reaches_its_accuracy_on_the_held_out_digits(digits):
  classifier, images, labels = digits
  predicted = classifier.model(digits_pixels(images, classifier.config)).numpy().argmax(-1)
  assert len(labels) == 360 and (predicted == labels).mean() >= ACCURACY


def test_held_out_fixture_is_the_split_training_never_saw():
  pytest.importorskip("sklearn", reason="scikit-learn not installed: the committed held-out split is used as it is")
  from tfm.training.digits import digits_split
  split, held_out = digits_split(), np.load(FIXTURES / "digits_test.npz")
  np.testing.assert_array_equal(split.test_images, held_out["images"])
  np.testing.assert_array_equal(split.test_labels, held_out["labels"])
  assert len(split.train_labels) + len(split.test_labels) == 1797
  train = {im.tobytes() for im in split.train_images}
  assert sum(im.tobytes() in train for im in split.test_images) <= 2   # load_digits has a few duplicate images, no more


def test_cli_classify_reads_a_png_written_from_a_digit(digits, tmp_path, capsys):
  _, images, labels = digits
  i = int(np.flatnonzero(labels == 7)[0])
  png = write_png(tmp_path / "seven.png", images[i])
  assert main(["classify", str(png), "--device", DEVICE, "--top-k", "2"]) == 0
  line = capsys.readouterr().out.strip()
  assert line.startswith(f"{png}: 7 (") and line.count("%") == 2
  first = float(line.split("(")[1].split("%")[0])
  assert first > 50.0


def test_classify_png_and_arrays_agree_and_greyscale_conversion_is_applied(digits, tmp_path):
  classifier, images, labels = digits
  png = write_png(tmp_path / "d.png", images[0])
  as_uint8 = np.round(images[0] / DIGIT_MAX * 255).astype(np.uint8)
  rgb = np.repeat(as_uint8[:, :, None], 3, axis=2)   # a colour image of the same greys
  probs = classifier.probabilities([png, as_uint8, rgb])
  np.testing.assert_allclose(probs[1:], probs[:1].repeat(2, 0), atol=1e-6)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-9)
  (top,) = classifier.classify([png], top_k=1)
  assert top[0].index == labels[0] and top[0].label == str(labels[0])


def _grey_png(path: Path, size: tuple[int, int]) -> None:
  from PIL import Image
  Image.new("L", size).save(path, format="PNG")


@pytest.mark.parametrize("name, make, message", [
  ("x.png", lambda p: p.write_text("not an image"), "is not an image Pillow can read"),
  ("x.png", lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
  ("x.png", lambda p: _grey_png(p, (16, 12)), r"is 16x12 pixels, the model takes 8x8.*--resize"),
  ("x.npy", lambda p: np.save(p, np.full((8, 8), np.nan, np.float32)), "64 NaN or Inf pixels"),
  ("x.npy", lambda p: np.save(p, np.full((8, 8), 16.0, np.float32)), r"float pixels in \[16, 16\]; float images must be in \[0, 1\]"),
  ("x.npy", lambda p: np.save(p, np.zeros((8, 8, 2), np.uint8)), r"shape \(8, 8, 2\)"),
  ("x.npy", lambda p: np.save(p, np.zeros((0, 8), np.uint8)), "is empty"),
  ("missing.png", lambda p: None, "does not exist"),
], ids=["not-an-image", "empty-file", "wrong-size", "nan", "out-of-range", "channels", "empty-array", "missing"])
def test_bad_images_get_a_clear_error(digits, tmp_path, capsys, name, make, message):
  path = tmp_path / name
  make(path)
  assert main(["classify", str(path), "--device", DEVICE]) == 2
  err = capsys.readouterr().err
  assert err.startswith("tfm classify: error: ") and re.search(message, err), err


def test_resize_is_asked_for_not_done_silently(digits, tmp_path):
  classifier, images, labels = digits
  from PIL import Image
  big = Image.fromarray(np.round(images[3] / DIGIT_MAX * 255).astype(np.uint8)).resize((32, 32), Image.Resampling.NEAREST)
  big.save(tmp_path / "big.png")
  with pytest.raises(tfm.InputError, match="is 32x32 pixels"): classifier.classify([tmp_path / "big.png"])
  (top,) = classifier.classify([tmp_path / "big.png"], top_k=1, resize=True)
  assert top[0].index == labels[3]


# --- attention rollout ---------------------------------------------------------------------------------------------

def test_attention_is_the_oracles_and_rollout_rows_sum_to_one(digits):
  classifier, images, _ = digits
  pixels = digits_pixels(images[:1], classifier.config)
  got = attention_of(classifier.model, pixels)
  oracle = VisionReference(weights.state_arrays(classifier.model), classifier.config.to_dict())
  oracle.features(pixels)
  expected = np.stack([w[0] for w in oracle.attention])   # (layers, heads, T, T)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  mixed = [0.5 * w.mean(0) + 0.5 * np.eye(w.shape[-1]) for w in expected]   # each layer with its residual
  by_hand = mixed[2] @ mixed[1] @ mixed[0]   # already row-stochastic: no renormalising needed
  np.testing.assert_allclose(rollout(got), by_hand, atol=1e-5)
  np.testing.assert_allclose(rollout(got).sum(-1), 1.0, atol=1e-9)


def test_cli_attention_image_draws_the_rollout_over_the_image(digits, tmp_path, capsys):
  pytest.importorskip("matplotlib", reason="matplotlib draws the map: pip install 'tfm[viz]'")
  _, images, labels = digits
  png = write_png(tmp_path / "d.png", images[0])
  out = tmp_path / "map.png"
  assert main(["attention", "--image", str(png), "--out", str(out), "--device", DEVICE]) == 0
  assert out.read_bytes()[:8] == PNG
  assert f"{png}: {labels[0]} (" in capsys.readouterr().out
  att = image_attention(digits[0], png)
  assert att.class_map.shape == (4, 4) and 0 < att.class_map.sum() < 1   # the patches' share; the rest is the class token's
  assert main(["attention", "--image", str(png), "some text", "--out", str(out)]) == 2
  assert "not both" in capsys.readouterr().err
  assert main(["attention", "--image", str(png), "--layer", "0", "--out", str(out)]) == 2
  assert "--image draws the rollout over all layers" in capsys.readouterr().err


# --- tfm compare --------------------------------------------------------------------------------------------------

def test_compare_vit_passes_on_the_backends_that_run_here(tmp_path, capsys):
  names = ["CPU"] + (["CL"] if backends.probe("CL").runs else [])
  out = tmp_path / "vit.json"
  code = main(["compare", "--model", "vit", "--backends", ",".join(names + ["METAL"]), "--repeat", "1", "--json", str(out)])
  text = capsys.readouterr().out
  assert code == 0, text
  assert "images/s" in text and "3 random images (3 x 8 x 8), 4 patches each" in text
  report = json.loads(out.read_text())
  ran = [r for r in report["runs"] if r["status"] == "pass"]
  assert [r["backend"] for r in ran] == names and report["ok"]
  for r in ran:
    assert set(r["max_abs_error"]) == {"features", "logits"} and max(r["max_abs_error"].values()) <= TOLERANCE
    assert r["reference"] or r["identical"] == {"top class": True}
  assert report["runs"][-1]["status"] == "unavailable"   # METAL: never counted as passing


def test_vit_kernels_render_for_metal_without_the_hardware(tmp_path, capsys):
  assert main(["kernels", "--target", "metal", "--config", "vit-tiny", "--out", str(tmp_path)]) == 0
  files = sorted(tmp_path.glob("*.metal"))
  assert len(files) >= 10 and all("kernel void" in f.read_text() for f in files)   # patch embedding, attention, LN, FFN, head


def test_classify_digits_example_names_the_digit(digits, tmp_path, capsys, monkeypatch):
  import runpy
  _, images, labels = digits
  png = write_png(tmp_path / "d.png", images[5])
  monkeypatch.setattr("sys.argv", ["classify_digits.py", str(png), "--device", DEVICE])
  runpy.run_path(str(Path(__file__).parent.parent / "examples" / "classify_digits.py"), run_name="__main__")
  out = capsys.readouterr().out
  assert out.startswith(f"{png}: {labels[5]} (") and "the class token looked most at patch row" in out


def test_vit_benchmark_times_tfm_eager_and_jit(tmp_path):
  from benchmarks.__main__ import main as bench_main
  out = tmp_path / "vit.json"
  assert bench_main(["--json", str(out), "vit", "--preset", "vit-tiny", "--backends", "CPU", "--batch", "2", "--reps", "1",
                     "--no-torch"]) == 0
  rows = json.loads(out.read_text())
  assert [(r["backend"], r["mode"]) for r in rows] == [("CPU", "eager"), ("CPU", "jit")]
  assert all(r["median_ms"] > 0 and r["kernels"] > 0 and r["shape"] == "2x3x8x8" for r in rows)


def test_digits_training_lowers_the_loss_and_saves_a_loadable_classifier(tmp_path):
  from tfm.training.digits import DigitsSplit, DigitsTrainer, VisionTrainOptions
  held_out = np.load(FIXTURES / "digits_test.npz")
  images, labels = held_out["images"].astype(np.float32), held_out["labels"].astype(np.int64)
  split = DigitsSplit(images[:300], labels[:300], images[300:], labels[300:])   # no scikit-learn needed
  trainer = DigitsTrainer("digits", VisionTrainOptions(steps=150, warmup=10, eval_every=150), device=DEVICE, split=split)
  def loss() -> float:
    logits = trainer.model(digits_pixels(split.train_images, trainer.config)).numpy().astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    return float(-logp[np.arange(len(split.train_labels)), split.train_labels].mean())
  assert loss() == pytest.approx(np.log(10), abs=1e-6)   # the zero-initialised head: every class equally likely
  trainer.run(log=open(tmp_path / "log.txt", "w"))
  assert loss() < 1.8   # from ln 10 = 2.303 (150 steps measured 1.47): it learned
  trainer.save(tmp_path / "digits.safetensors")
  again = Classifier.load(tmp_path / "digits.safetensors", DEVICE)
  np.testing.assert_array_equal(again.model(digits_pixels(images[:4], again.config)).numpy(),
                                trainer.model(digits_pixels(images[:4], trainer.config)).numpy())


def test_digits_training_refuses_the_text_trainers_flags(capsys):
  assert main(["train", "--task", "digits", "--resume", "--eval-size", "10"]) == 2
  assert "--resume, --eval-size do not apply to --task digits" in capsys.readouterr().err
