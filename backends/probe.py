"""Is a backend usable here? Each probe runs a real kernel in a subprocess with a timeout.

A hanging or crashing driver takes down only its subprocess. `available()` probes every backend at once, one thread
per subprocess, so it costs about the slowest probe; results are cached for the life of the process.
Timeouts default to 60 s ($TFM_PROBE_TIMEOUT). `main(NAME)` is the subprocess itself: it prints one line, `TFM_PROBE {json}`.
"""
from __future__ import annotations
import json, os, platform, shutil, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from backends.kernels import NVRTC_PIP, nvidia_lib_dir
from backends.registry import BACKENDS, COMPILE_ONLY, RUNS, UNAVAILABLE, Backend, BackendInfo, lookup

# generous: a probe is one import and one tiny kernel (1-2 s idle), but a machine busy compiling can take far longer,
# and a probe that times out marks a working backend unavailable for the whole process. TFM_PROBE_TIMEOUT overrides.
TIMEOUT = float(os.environ.get("TFM_PROBE_TIMEOUT", "60"))
_MARK = "TFM_PROBE "
_results: dict[str, BackendInfo] = {}


def probe(name: str, timeout: float = TIMEOUT) -> BackendInfo:
  """Probe one backend (cached per process): does a small matmul on it give the right number?"""
  b = lookup(name)
  if b.name not in _results: _results[b.name] = _probe_subprocess(b, timeout)
  return _results[b.name]


def available(timeout: float = TIMEOUT) -> list[BackendInfo]:
  """Every backend in registry order, probed in parallel."""
  with ThreadPoolExecutor(len(BACKENDS)) as pool: return list(pool.map(lambda b: probe(b.name, timeout), BACKENDS))


def _command(b: Backend) -> list[str]:
  return [sys.executable, "-c", f"from backends.probe import main; main({b.name!r})"]


def _env() -> dict[str, str]:
  env = dict(os.environ)
  root = str(Path(__file__).resolve().parents[1])
  env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
  # NVRTC from PyPI lives in site-packages; libnvrtc finds its builtins library only through LD_LIBRARY_PATH at startup
  if (lib := nvidia_lib_dir()) is not None:
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib), env.get("LD_LIBRARY_PATH")) if p)
  return env


def _probe_subprocess(b: Backend, timeout: float) -> BackendInfo:
  def unavailable(reason: str) -> BackendInfo: return BackendInfo(b.name, b.target, UNAVAILABLE, reason=reason)
  try:
    proc = subprocess.run(_command(b), env=_env(), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
  except subprocess.TimeoutExpired:
    return unavailable(f"probe timed out after {timeout:g} s (a hung driver?): to see where, run "
                       f"`DEV={b.target} DEBUG=2 python -c 'from tinygrad import Tensor; print((Tensor([1.0]) + 1).item())'`")
  line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith(_MARK)), None)
  if proc.returncode != 0 or line is None:
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return unavailable(f"probe crashed (exit code {proc.returncode}): {tail}")
  return BackendInfo(b.name, b.target, **json.loads(line[len(_MARK):]))


# ---------------------------------------------------------------- the subprocess side

def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"[:200]


def _diagnose(b: Backend) -> str | None:
  """A missing prerequisite that would fail the run, with its fix; None when none is missing."""
  dev = b.target.split(":")[0]
  if dev == "CPU" and shutil.which(os.environ.get("CC", "clang")) is None: return "clang not found: apt install clang"
  if b.target == "CPU:LLVM":
    from tinygrad.runtime.autogen import llvm
    # LLVMGetVersion exists since LLVM 16; older LLVM rejects tinygrad's opaque-pointer IR
    if getattr(llvm.dll, "LLVMGetVersion", None) is None: return "libLLVM >= 16 not found: apt install libllvm19"
  if dev == "CL":
    import ctypes
    from tinygrad.runtime.autogen import opencl as cl
    fn = getattr(cl.dll, "clGetPlatformIDs", None)
    if fn is None or fn(0, None, ctypes.byref(n := ctypes.c_uint32())) != 0 or n.value == 0:
      return "no OpenCL ICD: apt install pocl-opencl-icd"
  if dev == "CUDA":
    from tinygrad.runtime.autogen import cuda
    if getattr(cuda.dll, "cuInit", None) is None: return "libcuda not found: install the NVIDIA driver"
  if dev == "NV" and not Path("/dev/nvidiactl").exists(): return "no NVIDIA kernel driver (/dev/nvidiactl): install the NVIDIA driver"
  if dev == "AMD" and not Path("/dev/kfd").exists(): return "no AMD GPU driver (/dev/kfd): install the amdgpu driver (ROCm)"
  if dev == "METAL" and sys.platform != "darwin": return "needs macOS"
  if dev == "WEBGPU":
    from tinygrad.runtime.autogen import webgpu
    if getattr(webgpu.dll, "wgpuCreateInstance", None) is None:
      return "libwebgpu_dawn not found: install Dawn and set WEBGPU_PATH=/path/to/libwebgpu_dawn.so"
  return None


def _cpu_model() -> str:
  try: return next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
  except (OSError, StopIteration): return platform.processor() or platform.machine()


def _run(b: Backend) -> dict:
  from tinygrad import Context, Device, Tensor
  with Context(DEV=b.target):
    got = (Tensor([[1.0, 2.0], [3.0, 4.0]]) @ Tensor([[5.0, 6.0], [7.0, 8.0]])).sum().item()
    if got != 134.0: raise RuntimeError(f"wrong result: a 2x2 matmul summed to {got}, expected 134")
    dev = Device[b.target.split(":")[0]]
    renderer = type(dev.renderer).__name__.removesuffix("Renderer").removeprefix("CPU")   # read inside: DEV picks it
  if b.kind == "cpu": return {"device": f"{_cpu_model()} ({renderer})"}
  if b.kind == "opencl":
    import ctypes
    from tinygrad.runtime.autogen import opencl as cl
    cl.clGetDeviceInfo(dev.cl_dev, cl.CL_DEVICE_TYPE, 8, ctypes.byref(typ := ctypes.c_uint64()), None)
    return {"device": dev.device_name, "accelerator": bool(typ.value & cl.CL_DEVICE_TYPE_GPU)}
  if b.kind == "gpu": return {"device": f"{b.name} {dev.arch or ''}".strip(), "accelerator": True}
  return {"device": "tinygrad's Python emulator (slow: tiny shapes only)"}


def _compile(target: str) -> None:
  from tinygrad import Context, Tensor
  with Context(DEV=target): (Tensor.empty(16, 16) @ Tensor.empty(16, 16)).relu().realize()


def _worker(name: str) -> dict:
  b = lookup(name)
  # a missing prerequisite is certain to fail the run: skip opening the device
  if (reason := _diagnose(b)) is None:
    try: return {"status": RUNS, **_run(b)}
    except Exception as e: reason = _first_line(e)
  if b.compile_target is None: return {"status": UNAVAILABLE, "reason": reason}
  try: _compile(b.compile_target)
  except Exception as e:
    missing = "failed to load library nv" in str(e)   # tinygrad's message for a missing libnvrtc / libnvJitLink
    why = f"libnvrtc not found: {NVRTC_PIP}" if missing else _first_line(e)
    return {"status": UNAVAILABLE, "reason": f"{reason}; kernels not compile-checked ({why})"}
  return {"status": COMPILE_ONLY, "device": f"kernels compile for {b.compile_target}", "reason": reason}


def main(name: str) -> None:
  """The probe subprocess: one result line on stdout."""
  print(_MARK + json.dumps(_worker(name)), flush=True)
