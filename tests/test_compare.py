"""backends.compare (one computation on several backends) and `tfm compare` (the Transformer on each of them)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tinygrad import Tensor

import backends
from backends import compare as bc
from backends.kernels import nvrtc_path
import tfm
from tfm.apps import compare, oracle_decode
from tfm.apps import subjects
from tfm.cli import main
from tfm.io.audio import log_mel

X = np.arange(12, dtype=np.float32).reshape(3, 4) / 7


@pytest.fixture(scope="module")
def probed() -> dict[str, backends.BackendInfo]:
  return {info.name: info for info in backends.available(timeout=120.0)}


def cpu_and(probed, *names) -> list[backends.BackendInfo]:
  infos = [probed["CPU"], *(probed[n] for n in names)]
  if not infos[0].runs: pytest.skip(f"CPU does not run here: {infos[0].reason}")
  return infos


def doubling(info: backends.BackendInfo):
  """A tiny computation with a float output and an integer one."""
  def step():
    y = (Tensor(X, device=info.device_name) * 2).numpy()
    return {"y": y, "ids": y.argmax(1).astype(np.int32)}
  return {"double": step}


# --- backends.compare ---------------------------------------------------------------------------------------------

def test_a_backend_matching_the_expected_values_passes_and_is_timed(probed):
  runs = bc.compare(doubling, cpu_and(probed), expected={"y": X * 2}, tolerance=1e-6, repeat=2, progress=False)
  (cpu,) = runs
  assert cpu.status == bc.PASS and cpu.is_reference
  assert cpu.vs_expected == {"y": 0.0}
  assert cpu.timings["double"].first_s > 0 and len(cpu.timings["double"].times_s) == 2
  assert not bc.failed(runs)


def test_out_of_tolerance_and_differing_ids_fail_naming_the_output(probed):
  def skewed(info):
    def step():
      y = (Tensor(X, device=info.device_name) * 2).numpy()
      bump = info.name != "CPU"   # every backend but the reference computes something else
      return {"y": y + 1e-3 * bump, "ids": y.argmin(1).astype(np.int32) if bump else y.argmax(1).astype(np.int32)}
    return {"double": step}
  other = next((n for n in ("CL", "CPU:LLVM", "CPU:X86") if probed[n].runs), None)
  if other is None: pytest.skip("needs a second backend that runs here")
  runs = bc.compare(skewed, cpu_and(probed, other), expected={"y": X * 2}, tolerance=1e-4, repeat=0, progress=False)
  assert [r.status for r in runs] == [bc.PASS, bc.FAIL]
  assert runs[1].vs_expected["y"] == pytest.approx(1e-3, rel=1e-3)
  assert runs[1].identical == {"ids": False}
  assert "y off by 0.001 > 0.0001" in runs[1].note and "ids differs from CPU's" in runs[1].note
  assert bc.failed(runs) == [runs[1]]


def test_ids_are_judged_against_the_expected_ones_and_a_tie_the_judge_explains_passes_as_one(probed):
  ids = (X * 2).argmax(1).astype(np.int32)
  def judge(key, got): return "a near tie" if key == "ids" and got[0] == 3 else None
  (same,) = bc.compare(doubling, cpu_and(probed), expected={"ids": ids}, repeat=0, progress=False, judge=judge)
  assert same.status == bc.PASS and same.identical == {"ids": True} and not same.ties
  (tie,) = bc.compare(doubling, cpu_and(probed), expected={"ids": ids - 1}, repeat=0, progress=False, judge=judge)
  assert tie.status == bc.PASS and tie.identical == {"ids": False} and tie.ties == {"ids": "a near tie"} and "a near tie" in tie.note
  (other,) = bc.compare(doubling, cpu_and(probed), expected={"ids": ids - 1}, repeat=0, progress=False, judge=lambda k, g: None)
  assert other.status == bc.FAIL and "ids differs from the oracle's" in other.note


def test_nan_is_never_within_tolerance(probed):
  def nan(info): return {"nan": lambda: {"y": np.full((3, 4), np.nan, np.float32)}}
  (run,) = bc.compare(nan, cpu_and(probed), expected={"y": X}, tolerance=1.0, repeat=0, progress=False)
  assert run.status == bc.FAIL and math.isnan(run.max_error)


def test_an_exception_on_one_backend_is_its_error_and_the_others_still_run(probed):
  other = next((n for n in ("CL", "CPU:LLVM") if probed[n].runs), None)
  if other is None: pytest.skip("needs a second backend that runs here")
  def build(info):
    if info.name == other: raise RuntimeError("device fell over\nsecond line")
    return doubling(info)
  runs = bc.compare(build, cpu_and(probed, other), expected={"y": X * 2}, tolerance=1e-6, repeat=0, progress=False)
  assert [r.status for r in runs] == [bc.PASS, bc.ERROR]
  assert runs[1].note == "RuntimeError: device fell over"
  assert "Traceback" in runs[1].detail and "second line" in runs[1].detail   # the whole story, for --json
  assert bc.failed(runs) == [runs[1]]


def test_backends_that_cannot_run_are_reported_never_passed(probed):
  infos = [i for i in (probed["METAL"], probed["WEBGPU"]) if not i.runs]
  if not infos: pytest.skip("METAL and WEBGPU both run here")
  runs = bc.compare(doubling, infos, progress=False)
  assert [r.status for r in runs] == [bc.UNAVAILABLE] * len(infos)
  assert [r.note for r in runs] == [i.reason for i in infos] and not any(r.outputs for r in runs)


def test_a_skipped_backend_keeps_the_reason(probed):
  (run,) = bc.compare(doubling, [probed["PYTHON"]], skip={"python": "too slow"}, progress=False)
  assert (run.status, run.note) == (bc.SKIPPED, "too slow")


def test_float16_on_an_opencl_device_without_cl_khr_fp16_is_unsupported_not_run(probed):
  from tinygrad import Device
  cl = probed["CL"]
  if not cl.runs: pytest.skip(f"CL does not run here: {cl.reason}")
  with backends.use(cl): advertised = "cl_khr_fp16" in Device["CL"].device_exts
  (run,) = bc.compare(doubling, [cl], dtype="float16", progress=False)
  if advertised: assert run.status == bc.PASS
  else: assert run.status == bc.UNSUPPORTED and "cl_khr_fp16" in run.note and not run.outputs


def test_cuda_is_compile_checked_with_nvrtc(probed):
  cuda = probed["CUDA"]
  if cuda.status != backends.COMPILE_ONLY or not nvrtc_path(): pytest.skip(f"CUDA is {cuda.status} here")
  graph = compare.kernel_graph(compare.TransformerConfig.preset("tiny"))
  (run,) = bc.compare(doubling, [cuda], graph=graph, progress=False)
  assert run.status == bc.COMPILE_CHECKED and "compiled to PTX for sm_80 by NVRTC" in run.note
  assert int(run.note.split()[0]) >= 10   # attention, softmax, layernorm, FFN, generator kernels


def test_max_abs_diff_reports_shape_mismatch_and_nan():
  assert bc.max_abs_diff(np.zeros(3), np.zeros(4)) == math.inf
  assert math.isnan(bc.max_abs_diff(np.array([np.nan]), np.zeros(1)))
  assert bc.max_abs_diff(np.array([1.0, -2.0]), np.array([1.5, -2.0])) == 0.5


def test_the_backend_layer_does_not_import_tfm():
  code = "import sys, backends.compare; print(sorted(m for m in sys.modules if m == 'tfm' or m.startswith('tfm.')))"
  assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


# --- tfm compare ----------------------------------------------------------------------------------------------------

def test_tolerances_live_in_one_place():
  assert compare.TOLERANCE == {"float32": 1e-4, "float16": 2e-2, "int8": 1e-4}
  import test_model
  assert test_model.FLOAT32_TOLERANCE is compare.TOLERANCE["float32"]


def test_the_float16_oracle_uses_the_weights_rounded_as_the_backend_holds_them():
  s = subjects.tiny_subject(seed=1)
  exact, rounded = compare.oracle(s)["logits"], compare.oracle(s, "float16")["logits"]
  assert 0 < np.abs(exact - rounded).max() < compare.TOLERANCE["float16"]


def test_the_int8_oracle_uses_the_dequantized_weights_and_int8_passes_on_cpu(capsys, probed):
  s = subjects.tiny_subject(seed=1)
  exact, rounded = compare.oracle(s)["logits"], compare.oracle(s, "int8")["logits"]
  assert np.abs(exact - rounded).max() > 100 * compare.TOLERANCE["int8"]   # the quantization moves the logits...
  cpu_and(probed)
  code = main(["compare", "--model", "tiny", "--backends", "CPU", "--dtype", "int8", "--repeat", "1"])
  text = capsys.readouterr().out
  assert code == 0, text   # ...and the int8 model computes the function of its dequantized weights within 1e-4
  row = next(line for line in text.splitlines() if line.startswith("CPU") or line.strip().startswith("CPU"))
  assert "pass" in row
  with pytest.raises(tfm.InputError, match="int8' is for translation models"): compare.run(subjects.load_subject("vit"), "CPU", "int8")


def test_ids_that_differ_at_a_near_tie_of_the_oracle_are_a_tie_and_elsewhere_a_failure():
  s = subjects.tiny_subject(seed=0)
  ref = compare.oracle_model(s)
  want, _ = oracle_decode.greedy(ref, s.config, s.src, 8)
  logits = ref.logits(s.src[:1], np.array([[s.config.start_id, *want[0, :2]]]))[0, -1]
  runner_up = int(np.argsort(-logits)[1])   # the oracle's second choice at row 0, token 2
  apart = float(logits[want[0, 2]] - logits[runner_up])
  got = want.copy()
  got[0, 2] = runner_up
  verdict = oracle_decode.judge(ref, s.config, s.src, "greedy", got, want, tolerance=apart)   # a tie when apart <= 2 x tolerance
  assert verdict is not None and f"row 0, token 2: oracle's {want[0, 2]} vs {runner_up}, {apart:.1e} apart" in verdict
  assert oracle_decode.judge(ref, s.config, s.src, "greedy", got, want, tolerance=apart / 3) is None


def test_random_weights_make_every_bias_and_gain_count():
  arrays = subjects.tiny_subject(seed=0).arrays
  gains = [v for k, v in arrays.items() if "layer_norm" in k and k.endswith(".weight")]
  biases = [v for k, v in arrays.items() if k.endswith(".bias") and "layer_norm" not in k]
  assert gains and biases and all(np.abs(g - 1).max() > 0.1 for g in gains) and all(np.abs(b).max() > 0.1 for b in biases)


def test_compare_runs_each_check_and_writes_json(tmp_path, capsys, probed):
  cpu_and(probed)
  out = tmp_path / "report.json"
  code = main(["compare", "--model", "tiny", "--backends", "CPU,METAL,CUDA", "--repeat", "1", "--json", str(out)])
  text = capsys.readouterr().out
  assert code == 0, text
  rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")] for line in text.splitlines() if "|" in line}
  assert rows["CPU"][1:5] == ["pass", rows["CPU"][2], "reference", "yes"] and float(rows["CPU"][2]) <= 1e-4   # ids: the oracle's
  assert rows["METAL"][1] == "unavailable"
  report = json.loads(out.read_text())
  assert report["ok"] and report["tolerance"] == 1e-4 and report["dtype"] == "float32"
  cpu = report["runs"][0]
  assert set(cpu["max_abs_error"]) == {"encoder", "logits"} and set(cpu["timings"]) == {"encoder", "logits", "greedy", "beam"}
  assert all(len(t["times_s"]) == 1 for t in cpu["timings"].values()) and float(rows["CPU"][7]) > 0   # tokens/s
  assert max(cpu["max_abs_error"].values()) <= 1e-4
  assert [r["status"] for r in report["runs"][1:]] == ["unavailable", probed["CUDA"].status == backends.COMPILE_ONLY and
                                                       nvrtc_path() and "compile-checked" or "unavailable"]


def test_compare_runs_a_whisper_folder_on_log_mel_features_against_the_oracle(capsys, probed):
  cpu_and(probed)
  folder = Path(__file__).resolve().parent / "fixtures" / "whisper_tiny"
  subject = subjects.load_subject(str(folder))
  assert isinstance(subject, subjects.AudioSubject) and subject.src.shape == (2, 8, 32) and subject.src.dtype == np.float32
  np.testing.assert_array_equal(subject.src[1], log_mel(subjects.sounds(0.32)[1], 8, 32 * 160))
  assert main(["compare", "--model", str(folder), "--backends", "CPU", "--repeat", "1"]) == 0
  out = capsys.readouterr().out
  cpu = next(line.split("|") for line in out.splitlines() if line.startswith("CPU "))
  assert cpu[1].strip() == "pass" and float(cpu[2]) <= 1e-4 and "windows/s" in out
  assert "2 synthetic sounds (tone 440 Hz, chirp 100 Hz-7.9 kHz) as log-mel features (8 x 32)" in out
  assert out.rstrip().endswith("ok: ran on CPU: within tolerance")


def test_compare_exits_1_when_a_backend_is_out_of_tolerance(capsys, monkeypatch, probed):
  cpu_and(probed)
  monkeypatch.setitem(compare.TOLERANCE, "float32", 1e-12)   # float32 cannot meet this: the check must notice
  assert main(["compare", "--model", "tiny", "--backends", "CPU", "--repeat", "0", "--markdown"]) == 1
  out = capsys.readouterr().out
  assert "| CPU | FAIL |" in out and "FAILED: CPU: FAIL (encoder off by" in out


@pytest.mark.parametrize("args, message", [
  (["--model", "no/such.safetensors"], "--model 'no/such.safetensors': no such file or folder"),
  (["--backends", "CPU,TPU"], "unknown backend 'TPU'"),
  (["--backends", ""], "give auto, all or a comma-separated list"),
])
def test_compare_refuses_bad_arguments_with_the_fix(args, message, capsys):
  assert main(["compare", *args]) == 2
  assert message in capsys.readouterr().err
