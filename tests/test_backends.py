"""backends: the registry, the probes on this machine, and selection (with simulated probes)."""
from __future__ import annotations
import ctypes.util, glob, importlib, os, shutil, subprocess, sys, warnings
from pathlib import Path
import pytest
import backends
from backends import RUNS, COMPILE_ONLY, UNAVAILABLE, BackendInfo, BackendUnavailable, webgpu
from backends import compare as backends_compare

probe_mod = importlib.import_module("backends.probe")     # `backends.probe` is the function
select_mod = importlib.import_module("backends.select")   # `backends.select` is the function


def info(name: str, status: str = UNAVAILABLE, reason: str = "", accelerator: bool = False) -> BackendInfo:
  return BackendInfo(name, backends.lookup(name).target, status, reason=reason or ("" if status == RUNS else f"no {name} here"),
                     accelerator=accelerator)


@pytest.fixture
def fake(monkeypatch):
  """Simulated probes: fake(CL=RUNS, ...) makes those backends run and every other one unavailable."""
  monkeypatch.delenv("TFM_DEVICE", raising=False)
  def install(**statuses: str) -> list[str]:
    table = {n: info(n, statuses.get(n.replace(":", "_"), UNAVAILABLE)) for n in backends.NAMES}
    probed: list[str] = []
    def probe(name, timeout=None):
      probed.append(backends.lookup(name).name)
      return table[backends.lookup(name).name]
    monkeypatch.setattr(select_mod, "probe", probe)
    monkeypatch.setattr(select_mod, "available", lambda timeout=None: [probe(n) for n in backends.NAMES])
    return probed
  return install


# ---------------------------------------------------------------- registry

def test_registry_has_every_tinygrad_backend_with_its_target():
  assert backends.NAMES == ("CPU", "CPU:LLVM", "CPU:X86", "CL", "CUDA", "CUDA:PTX", "NV", "METAL", "AMD", "WEBGPU", "PYTHON")
  assert {b.name: b.target for b in backends.BACKENDS}["CUDA:PTX"] == "CUDA:PTX"


def test_names_are_case_insensitive():
  assert backends.lookup(" cpu:llvm ").target == "CPU:LLVM"


def test_unknown_name_lists_the_valid_names():
  with pytest.raises(ValueError, match="unknown backend 'VULKAN'") as e: backends.select("VULKAN")
  assert all(n in str(e.value) for n in backends.NAMES)


def test_device_name_is_the_bare_device_of_the_target():
  assert info("CPU:LLVM", RUNS).device_name == "CPU" and info("CL", RUNS).device_name == "CL"


def test_format_table_aligns_columns():
  lines = backends.format_table([info("CPU", RUNS), info("CUDA:PTX", COMPILE_ONLY, "libcuda not found")]).splitlines()
  assert lines[0].split(" | ")[:3] == ["name    ", "status      ", "device"]
  assert len({ln.index("|") for ln in lines}) == 1 and lines[2].endswith("| libcuda not found")


# ---------------------------------------------------------------- selection (simulated probes)

def test_explicit_name_probes_only_that_backend(fake):
  probed = fake(CPU=RUNS, CL=RUNS)
  assert backends.select("cpu").name == "CPU" and probed == ["CPU"]


def test_unusable_name_gives_reason_and_what_runs(fake):
  fake(CPU=RUNS, PYTHON=RUNS)
  with pytest.raises(BackendUnavailable, match=r"CUDA is unavailable here \(no CUDA here\)\. Backends that run here: CPU, PYTHON"):
    backends.select("CUDA")


def test_tfm_device_overrides_auto_only(fake, monkeypatch):
  fake(CPU=RUNS, CL=RUNS)
  monkeypatch.setenv("TFM_DEVICE", "cpu")
  assert backends.select().name == "CPU"
  assert backends.select("CL").name == "CL"


def test_bad_tfm_device_is_named_in_the_error(fake, monkeypatch):
  fake(CPU=RUNS)
  monkeypatch.setenv("TFM_DEVICE", "GPU")
  with pytest.raises(ValueError, match="TFM_DEVICE='GPU': unknown backend 'GPU'"): backends.select()


@pytest.mark.parametrize("preference", ["CUDA,CL,CPU", ["cuda", "cl", "cpu"], ("CUDA", "CL", "CPU")])
def test_priority_list_picks_the_first_that_runs(fake, preference):
  fake(CL=RUNS, CPU=RUNS)
  with pytest.warns(UserWarning, match=r"CUDA is unavailable here \(no CUDA here\); using CL"):
    assert backends.select(preference).name == "CL"


def test_priority_list_with_nothing_usable_raises(fake):
  fake(CPU=RUNS)
  with pytest.raises(BackendUnavailable, match="METAL is unavailable here.*CUDA is unavailable here.*run here: CPU"):
    backends.select("METAL,CUDA")


def test_auto_prefers_an_accelerator(fake):
  fake(CUDA=RUNS, CL=RUNS, CPU=RUNS)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert backends.select("auto").name == "CUDA"


def test_auto_picks_cpu_before_opencl_on_the_cpu_and_an_opencl_gpu_first(fake, monkeypatch):
  fake(CL=RUNS, CPU=RUNS, PYTHON=RUNS)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert backends.select().name == "CPU"   # PoCL is CPU-class: tfm's CPU kernels are the faster
  table = {n: info(n, RUNS if n in ("CL", "CPU") else UNAVAILABLE, accelerator=n == "CL") for n in backends.NAMES}
  monkeypatch.setattr(select_mod, "available", lambda timeout=None: list(table.values()))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert backends.select().name == "CL"   # an OpenCL GPU is an accelerator (and nothing was skipped)


def test_auto_falls_back_and_says_so(fake):
  fake(CL=RUNS, PYTHON=RUNS)
  with pytest.warns(UserWarning, match=r"auto: CPU is unavailable here \(no CPU here\); falling back to CL"):
    assert backends.select().name == "CL"


def test_auto_with_nothing_running_shows_the_table(fake):
  fake()
  with pytest.raises(BackendUnavailable, match=r"no backend runs here:\nname"): backends.select()


# ---------------------------------------------------------------- probes on this machine

ICDS = sorted(Path("/etc/OpenCL/vendors").glob("*.icd")) if Path("/etc/OpenCL/vendors").is_dir() else []


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "clang")) is None, reason="needs clang (the CPU backend's compiler)")
def test_cpu_runs_where_clang_is_installed():
  cpu = backends.probe("CPU")
  assert cpu.status == RUNS and cpu.device.endswith("(Clang)")


@pytest.mark.skipif(not ICDS, reason="needs an OpenCL ICD in /etc/OpenCL/vendors (e.g. apt install pocl-opencl-icd)")
def test_cl_runs_where_an_opencl_icd_is_registered():
  cl = backends.probe("CL")
  assert cl.status == RUNS, cl.reason
  if [p.name for p in ICDS] == ["pocl.icd"]: assert cl.device.startswith("pthread") and not cl.accelerator   # PoCL: a CPU


LLVM_16_OR_LATER = [p for pattern in ("/usr/lib/*/libLLVM-1[6-9]*.so*", "/usr/lib/*/libLLVM-2[0-9]*.so*", "/usr/lib/*/libLLVM.so.1[6-9]*",
                                        "/usr/lib/*/libLLVM.so.2[0-9]*") for p in glob.glob(pattern)]


@pytest.mark.skipif(not LLVM_16_OR_LATER, reason="needs libLLVM >= 16 (scripts/setup installs Debian's libllvm19)")
def test_cpu_llvm_runs_and_amd_kernels_compile_where_libllvm_16_or_later_is_installed():
  from tfm.apps.compare import kernel_graph
  from tfm.config import TransformerConfig
  llvm = backends.probe("CPU:LLVM")
  assert llvm.status == RUNS and llvm.device.endswith("(LLVM)"), llvm.reason
  amd = backends.probe("AMD")
  if amd.status == RUNS: pytest.skip("an AMD GPU runs here: checked as a running backend")
  assert amd.status == COMPILE_ONLY, amd.reason
  (run,) = backends_compare.compare(lambda info: {}, [amd], graph=kernel_graph(TransformerConfig.preset("tiny")), progress=False)
  assert run.status == backends_compare.COMPILE_CHECKED and run.note.startswith("kernels compiled for NULL:AMDLLVM:gfx1100"), run.note


# ---------------------------------------------------------------- WebGPU: Dawn on Vulkan

def probe_anew(monkeypatch, **env) -> BackendInfo:
  """WEBGPU probed in a subprocess under `env`, neither kept in this process nor on disk."""
  monkeypatch.setattr(probe_mod, "_results", {})
  monkeypatch.setenv("TFM_CACHE", "0")
  for k, v in env.items(): monkeypatch.setenv(k, v)
  return backends.probe("WEBGPU", fresh=True)


needs_dawn = pytest.mark.skipif(webgpu.dawn_library() is None, reason="needs dawn-python (pip install dawn-python; in the test extra)")
needs_vulkan = pytest.mark.skipif(sys.platform == "linux" and not webgpu.vulkan_drivers(),
                                  reason="needs a Vulkan driver (apt install mesa-vulkan-drivers: lavapipe)")


@needs_dawn
def test_dawn_is_found_in_its_package_without_environment_variables():
  env = {k: v for k, v in os.environ.items() if k != "WEBGPU_PATH"}
  code = "import os, backends; print(os.environ['WEBGPU_PATH'])"
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
  assert out.stdout.strip() == str(webgpu.dawn_library()) and "pydawn" in out.stdout
  assert "libwebgpu_dawn" in webgpu.dawn_library().name


@needs_dawn
@needs_vulkan
def test_webgpu_runs_names_its_adapter_and_prints_no_display_warnings():
  info = backends.probe("WEBGPU")
  assert info.status == RUNS, info.reason
  assert info.device and "Null" not in info.device
  if "llvmpipe" in info.device: assert "lavapipe" in info.device and not info.accelerator   # Vulkan on the CPU
  env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "NODEVICE_SELECT")}
  code = "import backends; from tinygrad import Tensor; print((Tensor([1.0, 2.0], device='WEBGPU') * 3).tolist())"
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip() == "[3.0, 6.0]", out.stderr
  assert "XDG_RUNTIME_DIR" not in out.stderr, out.stderr


@needs_dawn
def test_webgpu_without_a_vulkan_driver_says_which_to_install(monkeypatch, tmp_path):
  if sys.platform != "linux": pytest.skip("Dawn runs on Vulkan on Linux only")
  info = probe_anew(monkeypatch, VK_ICD_FILENAMES=str(tmp_path / "none.json"))
  assert info.status == UNAVAILABLE and info.reason.startswith("no Vulkan driver") and "mesa-vulkan-drivers" in info.reason


def test_webgpu_without_dawn_says_how_to_get_it(monkeypatch, tmp_path):
  info = probe_anew(monkeypatch, WEBGPU_PATH=str(tmp_path / "libwebgpu_dawn.so"))
  assert info.status == UNAVAILABLE and "is not a file" in info.reason and "pip install dawn-python" in info.reason


@pytest.mark.skipif(ctypes.util.find_library("cuda") is not None or sys.platform == "darwin",
                    reason="checks a machine without libcuda and without macOS")
def test_cuda_and_metal_do_not_run_here():
  cuda, metal = backends.probe("CUDA"), backends.probe("METAL")
  assert cuda.status in (COMPILE_ONLY, UNAVAILABLE) and cuda.reason.startswith("libcuda not found: install the NVIDIA driver")
  assert (metal.status, metal.reason) == (UNAVAILABLE, "needs macOS")


def test_available_probes_every_backend_in_parallel(monkeypatch, tmp_path):
  # each fake probe checks in, then waits for all the others to check in: probed one after another, the first would
  # wait out its 60 s and report fewer than all of them
  n = len(backends.NAMES)
  barrier = (f"import json, os, time; from pathlib import Path; d = Path({str(tmp_path)!r}); (d / str(os.getpid())).touch(); "
             f"end = time.monotonic() + 60\nwhile len(list(d.iterdir())) < {n} and time.monotonic() < end: time.sleep(0.01)\n"
             f"print('TFM_PROBE ' + json.dumps({{'status': 'unavailable', 'reason': f'{{len(list(d.iterdir()))}} probes at once'}}))")
  monkeypatch.setattr(probe_mod, "_results", {})
  monkeypatch.setenv("TFM_CACHE", "0")   # these results are fakes: never saved for the probes that follow
  monkeypatch.setattr(probe_mod, "_command", lambda b: [sys.executable, "-c", barrier])
  infos = backends.available(timeout=120, fresh=True)
  assert [i.name for i in infos] == list(backends.NAMES) and {i.reason for i in infos} == {f"{n} probes at once"}


def test_a_hanging_probe_is_cut_off_by_its_timeout(monkeypatch):
  monkeypatch.setattr(probe_mod, "_results", {})
  monkeypatch.setattr(probe_mod, "_command", lambda b: [sys.executable, "-c", "import time; time.sleep(60)"])
  result = backends.probe("CPU", timeout=1, fresh=True)   # the reason says the timeout ended it, not the sleep's end
  assert result.status == UNAVAILABLE and result.reason.startswith("probe timed out after 1 s")


def test_a_crashing_probe_is_reported_not_raised(monkeypatch):
  monkeypatch.setattr(probe_mod, "_results", {})
  monkeypatch.setattr(probe_mod, "_command", lambda b: [sys.executable, "-c", "import os; os.abort()"])
  assert backends.probe("CL", fresh=True).reason.startswith("probe crashed (exit code -6)")


def test_use_compiles_with_the_targets_renderer():
  from tinygrad import Device, Tensor
  from tinygrad.renderer.llvmir import CPULLVMRenderer
  with backends.use("CPU:LLVM") as chosen:
    assert chosen.device_name == "CPU" and isinstance(Device[chosen.device_name].renderer, CPULLVMRenderer)
    assert (Tensor([1.0, 2.0], device=chosen.device_name) * 3).tolist() == [3.0, 6.0]
  assert not isinstance(Device["CPU"].renderer, CPULLVMRenderer)


# ---------------------------------------------------------------- OpenCL output

def test_a_first_opencl_compile_prints_no_compiler_warnings(tmp_path):
  cl = backends.probe("CL")
  if not cl.runs: pytest.skip(f"CL does not run here ({cl.status}: {cl.reason})")
  # fresh kernel caches, so that every kernel of a tiny forward pass is compiled by the OpenCL driver in this run
  env = {**os.environ, "POCL_CACHE_DIR": str(tmp_path / "pocl"), "CACHEDB": str(tmp_path / "cache.db")}
  env.pop("POCL_EXTRA_BUILD_FLAGS", None)
  code = ("import numpy as np, tfm; m = tfm.Transformer(tfm.TransformerConfig.preset('tiny'), device='CL'); "
          "print(m(np.array([[5, 6, 7, 2]]), np.array([[1, 5]])).shape)")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0 and out.stdout.strip() == "(1, 2, 64)", out.stderr
  assert "warning" not in out.stderr, out.stderr[:500]
