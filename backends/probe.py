"""Is a backend usable here? Each probe runs a real kernel in a subprocess with a timeout.

A hanging or crashing driver takes down only its subprocess. `available()` probes every backend at once, one thread
per subprocess, so it costs about the slowest probe (seconds: a Python start and a kernel compile each). Results are
kept for the life of the process and on disk (probes.json in tfm's cache folder, `backends.machine`) for a day, under a
fingerprint of what they depend on (Python, tinygrad, the compiler and driver files, the environment variables that
locate them): a new process reuses them instead of probing again, and installing a driver or compiler changes the
fingerprint. Timeouts and crashes, which can be passing, are not kept. `available(fresh=True)` probes anew.
Timeouts default to 60 s ($TFM_PROBE_TIMEOUT). `main(NAME)` is the subprocess itself: it prints one line, `TFM_PROBE {json}`.
"""
from __future__ import annotations
import dataclasses, hashlib, json, os, platform, shutil, subprocess, sys, tempfile, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from backends import switches, webgpu
from backends.kernels import NVRTC_PIP, nvidia_lib_dir
from backends.machine import driver_files, file_identity, cache_dir, cache_enabled
from backends.registry import BACKENDS, COMPILE_ONLY, RUNS, UNAVAILABLE, Backend, BackendInfo, lookup

# generous: a probe is one import and one tiny kernel (1-2 s idle), but a machine busy compiling can take far longer,
# and a probe that times out marks a working backend unavailable for the whole process. TFM_PROBE_TIMEOUT overrides.
TIMEOUT = switches.probe_timeout()
_MARK = "TFM_PROBE "
KEPT_FOR = 24 * 3600   # seconds a saved probe result is trusted
_results: dict[str, BackendInfo] = {}
_saving = threading.Lock()


def probe(name: str, timeout: float = TIMEOUT, fresh: bool = False) -> BackendInfo:
  """Probe one backend (kept per process and on disk, see the module doc): does a small matmul on it give the right
  number? fresh=True probes again whatever was kept."""
  b = lookup(name)
  if fresh or b.name not in _results:
    saved = None if fresh else _saved().get(b.name)
    _results[b.name] = BackendInfo(**{k: v for k, v in saved.items() if k != "at"}) if saved else _save(_probe_subprocess(b, timeout))
  return _results[b.name]


def available(timeout: float = TIMEOUT, fresh: bool = False) -> list[BackendInfo]:
  """Every backend in registry order, probed in parallel (fresh=True: probed again, nothing kept is reused)."""
  with ThreadPoolExecutor(len(BACKENDS)) as pool: return list(pool.map(lambda b: probe(b.name, timeout, fresh), BACKENDS))


# ---------------------------------------------------------------- results kept on disk

def saved_path() -> Path: return cache_dir() / "probes.json"


def _environment() -> str:
  """A fingerprint of what probe results depend on; a saved result under another one is not used."""
  from importlib.metadata import version
  env = {k: os.environ.get(k) for k in ("PATH", "LD_LIBRARY_PATH", "CC", "LLVM_PATH", "OCL_ICD_VENDORS", "OCL_ICD_FILENAMES",
                                        "CUDA_PATH", "NVRTC_PATH", "WEBGPU_PATH", "DEV")}
  facts = {"python": sys.executable, "tinygrad": version("tinygrad"), "env": env,
           "drivers": {kind: driver_files(kind) for kind in ("CPU", "CL", "CUDA", "WEBGPU")},
           "devices": [os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/kfd")], "nvrtc": file_identity(str(nvidia_lib_dir() or ""))}
  return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _saved() -> dict[str, dict]:
  """{backend: BackendInfo fields} saved under this environment's fingerprint and not older than KEPT_FOR."""
  if not cache_enabled(): return {}
  try: data = json.loads(saved_path().read_text(encoding="utf-8"))
  except (OSError, ValueError): return {}
  if not isinstance(data, dict) or data.get("environment") != _environment() or not isinstance(data.get("results"), dict): return {}
  fields = {f.name for f in dataclasses.fields(BackendInfo)} - {"devices"}   # a selection's, never a probe's
  return {name: r for name, r in data["results"].items()
          if isinstance(r, dict) and set(r) == fields | {"at"} and time.time() - r["at"] < KEPT_FOR}


def _fields(info: BackendInfo) -> dict:
  return {k: v for k, v in dataclasses.asdict(info).items() if k != "devices"}


def _save(info: BackendInfo) -> BackendInfo:
  """Keep a result on disk unless it may be passing (a timeout, a crash); written atomically. Returns info."""
  if not cache_enabled() or "timed out" in info.reason or "probe crashed" in info.reason: return info
  with _saving:
    results = {**_saved(), info.name: {**_fields(info), "at": time.time()}}
    try:
      saved_path().parent.mkdir(parents=True, exist_ok=True)
      fd, tmp = tempfile.mkstemp(dir=saved_path().parent, prefix=".probes-", suffix=".json")
      with os.fdopen(fd, "w", encoding="utf-8") as f: json.dump({"environment": _environment(), "results": results}, f, indent=1)
      os.replace(tmp, saved_path())
    except OSError: pass   # a read-only or full cache folder: the next process probes again
  return info


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
  if dev == "WEBGPU": return webgpu.diagnose()
  return None


def _cpu_model() -> str:
  try: return next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
  except (OSError, StopIteration): return platform.processor() or platform.machine()


def _run(b: Backend) -> dict:
  from tinygrad import Context, Device, Tensor
  found = webgpu.adapter() if b.name == "WEBGPU" else None   # no adapter: say so before tinygrad fails less clearly
  with Context(DEV=b.target):
    got = (Tensor([[1.0, 2.0], [3.0, 4.0]]) @ Tensor([[5.0, 6.0], [7.0, 8.0]])).sum().item()
    if got != 134.0: raise RuntimeError(f"wrong result: a 2x2 matmul summed to {got}, expected 134")
    dev = Device[b.target.split(":")[0]]
    renderer = type(dev.renderer).__name__.removesuffix("Renderer").removeprefix("CPU")   # read inside: DEV picks it
  if b.kind == "cpu": return {"device": f"{_cpu_model()} ({renderer})", "count": os.cpu_count() or 1}
  count = dev.count() if b.kind in ("opencl", "gpu") else 1
  if b.kind == "opencl":
    import ctypes
    from tinygrad.runtime.autogen import opencl as cl
    cl.clGetDeviceInfo(dev.cl_dev, cl.CL_DEVICE_TYPE, 8, ctypes.byref(typ := ctypes.c_uint64()), None)
    return {"device": dev.device_name, "accelerator": bool(typ.value & cl.CL_DEVICE_TYPE_GPU), "count": count}
  if found is not None:   # which adapter: a real GPU, or lavapipe on the CPU (not an accelerator)
    return {"device": f"{found['name']}, {found['backend']}" + (f", {dev.arch}" if dev.arch else ""), "accelerator": not found["cpu"], "count": count}
  if b.kind == "gpu": return {"device": f"{b.name} {dev.arch or ''}".strip(), "accelerator": True, "count": count}
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
