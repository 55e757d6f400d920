"""Render the kernels of a tinygrad computation in any kernel language without the hardware; compile CUDA with NVRTC.

`render(fn, target)` builds `fn()` on tinygrad's NULL device (nothing runs, nothing is allocated), schedules it and
renders each kernel: `schedule_linear()` -> kernel sinks -> `to_program(sink, renderer)`, whose `Ops.SOURCE` child is
the source (for PTX, the `Ops.BINARY` child: the same text with `.version`/`.target` filled in).

The renderers are render-only subclasses: none loads a native compiler (NVRTC, Metal's libSystem, clang, libLLVM),
and being distinct classes they keep these programs out of the real devices' compile cache, whose key holds the
renderer type. The CUDA and PTX targets name device "CUDA", as a real CUDA device does, so float32 matmuls render
without TF32 tensor cores unless `ALLOW_TF32=1` (tinygrad only withholds TF32 on a "CUDA"/"NV" target, not on NULL).
"""
from __future__ import annotations
import ctypes, ctypes.util, functools, os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple
from tinygrad import Context, Tensor
from tinygrad.codegen import to_program
from tinygrad.codegen.opt import tc
from tinygrad.device import CompileError
from tinygrad.helpers import Target
from backends.registry import SelectionError
from tinygrad.renderer import Renderer
from tinygrad.renderer.cstyle import ClangRenderer, CUDARenderer, MetalRenderer, OpenCLRenderer
from tinygrad.renderer.llvmir import CPULLVMRenderer
from tinygrad.renderer.ptx import PTXRenderer
from tinygrad.renderer.wgsl import WGSLRenderer
from tinygrad.uop.ops import Ops

NVRTC_PIP = "pip install 'nvidia-cuda-nvrtc==13.0.*' 'nvidia-nvjitlink==13.0.*'"


class Kernel(NamedTuple):
  name: str
  source: str


class _CUDASource(CUDARenderer):
  def __init__(self, target: Target):
    Renderer.__init__(self, target)
    self.tensor_cores = tc.get_cuda(target.arch)

class _PTXSource(PTXRenderer): pass   # on device "CUDA" its compiler only fills in .version/.target: pure Python

class _MetalSource(MetalRenderer):
  def __init__(self, target: Target):
    Renderer.__init__(self, target)
    self.tensor_cores = tc.metal      # Apple7 (M1) and later have simdgroup matrices

class _OpenCLSource(OpenCLRenderer): pass

class _ClangSource(ClangRenderer):
  def __init__(self, target: Target): Renderer.__init__(self, target)

class _LLVMSource(CPULLVMRenderer):
  def __init__(self, target: Target): Renderer.__init__(self, target)

class _WGSLSource(WGSLRenderer): pass


# target -> (renderer, tinygrad target with the default arch, file extension)
LANGUAGES: dict[str, tuple[type[Renderer], Target, str]] = {
  "cuda": (_CUDASource, Target("CUDA", "CUDA", "sm_80"), ".cu"),
  "ptx": (_PTXSource, Target("CUDA", "PTX", "sm_80"), ".ptx"),
  "metal": (_MetalSource, Target("METAL", "METAL", "Apple7"), ".metal"),
  "opencl": (_OpenCLSource, Target("CL", "OPENCL"), ".cl"),
  "cpu": (_ClangSource, Target("CPU", "CLANG", "x86_64,native"), ".c"),
  "llvm": (_LLVMSource, Target("CPU", "LLVM", "x86_64,native"), ".ll"),
  "wgsl": (_WGSLSource, Target("WEBGPU", "WGSL"), ".wgsl"),
}


def _language(target: str) -> tuple[type[Renderer], Target, str]:
  if not isinstance(target, str) or target.lower() not in LANGUAGES:
    raise SelectionError(f"unknown kernel target {target!r}: expected one of {', '.join(LANGUAGES)}")
  return LANGUAGES[target.lower()]


def render(fn: Callable[[], Tensor | tuple[Tensor, ...]], target: str, arch: str | None = None) -> list[Kernel]:
  """The kernels `fn()` compiles to, as (name, source) in `target`'s language; `arch` overrides e.g. sm_80."""
  cls, tgt, _ = _language(target)
  renderer = cls(Target(tgt.device, tgt.renderer, arch or tgt.arch))
  with Context(DEV="NULL"):
    out = fn()
    tensors = out if isinstance(out, (tuple, list)) else (out,)
    linear = tensors[0].schedule_linear(*tensors[1:])
  sinks = list(dict.fromkeys(c.src[0] for c in linear.src if c.op is Ops.CALL and c.src[0].op is Ops.SINK))
  kernels = []
  for sink in sinks:
    prg = to_program(sink, renderer)
    text = next(s.arg for s in prg.src if s.op is (Ops.BINARY if target.lower() == "ptx" else Ops.SOURCE))
    kernels.append(Kernel(prg.arg.function_name, text.decode() if isinstance(text, bytes) else text))
  return kernels


def example_layer(batch: int = 2, seq: int = 8, d_model: int = 16, heads: int = 2, d_ff: int = 32) -> Tensor:
  """A post-norm Transformer encoder layer on empty tensors: the attention, softmax, layernorm and FFN kernels."""
  x = Tensor.empty(batch, seq, d_model)
  wq, wk, wv, wo, w1, w2 = (Tensor.empty(*s) for s in [(d_model, d_model)] * 4 + [(d_model, d_ff), (d_ff, d_model)])
  q, k, v = ((x @ w).reshape(batch, seq, heads, -1).transpose(1, 2) for w in (wq, wk, wv))   # (B, H, S, d_head)
  attn = q.scaled_dot_product_attention(k, v).transpose(1, 2).reshape(batch, seq, d_model) @ wo
  h = (x + attn).layernorm()
  return (h + (h @ w1).relu() @ w2).layernorm()


# ---------------------------------------------------------------- NVRTC

def nvidia_lib_dir() -> Path | None:
  """The folder of libnvrtc from PyPI (site-packages/nvidia/cu13/lib for CUDA 13), if installed."""
  try: import nvidia
  except ImportError: return None
  return next((p.parent for root in nvidia.__path__ for p in sorted(Path(root).glob("*/lib/libnvrtc.so.*"))), None)


def nvrtc_path() -> str | None:
  """libnvrtc to use: $NVRTC_PATH, else the PyPI wheel, else the system's; None when there is none."""
  if (env := os.environ.get("NVRTC_PATH")) and Path(env).is_file(): return env
  if (lib := nvidia_lib_dir()) is not None: return str(next(lib.glob("libnvrtc.so.*")))
  return ctypes.util.find_library("nvrtc")


class NVRTCNotFound(RuntimeError): pass


@functools.cache
def _nvrtc() -> ctypes.CDLL:
  if (path := nvrtc_path()) is None:
    raise NVRTCNotFound(f"libnvrtc not found (looked at $NVRTC_PATH, site-packages/nvidia, the system): {NVRTC_PIP}")
  # libnvrtc dlopens libnvrtc-builtins by name, and LD_LIBRARY_PATH is read only at process start: load it first, globally
  for builtins in sorted(Path(path).parent.glob("libnvrtc-builtins.so.*")): ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
  lib = ctypes.CDLL(path)
  lib.nvrtcGetErrorString.restype = ctypes.c_char_p
  return lib


def nvrtc_version() -> tuple[int, int]:
  lib, major, minor = _nvrtc(), ctypes.c_int(), ctypes.c_int()
  lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
  return major.value, minor.value


def compile_cuda(kernels: list[Kernel], arch: str = "sm_80") -> list[Kernel]:
  """Compile CUDA C kernels (from `render(..., "cuda")`) to PTX with NVRTC, as tinygrad's CUDA device does."""
  lib = _nvrtc()
  # tinygrad's NVRTC options; half kernels include cuda_fp16.h from a CUDA toolkit or the nvidia-cuda-runtime wheel
  includes = [os.environ.get("CUDA_PATH", "/usr/local/cuda") + "/include", "/usr/include", "/opt/cuda/include"]
  if (wheel := nvidia_lib_dir()) is not None: includes.append(str(wheel.parent / "include"))
  options = [f"--gpu-architecture={arch}", *(f"-I{d}" for d in includes)] + (["--minimal"] if nvrtc_version() >= (12, 4) else [])
  out = []
  for k in kernels:
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), k.source.encode(), f"{k.name}.cu".encode(), 0, None, None), k, arch)
    try:
      opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
      _check(lib, lib.nvrtcCompileProgram(prog, len(options), opts), k, arch, _read(lib, prog, "ProgramLog"))
      out.append(Kernel(k.name, _read(lib, prog, "PTX")))
    finally: lib.nvrtcDestroyProgram(ctypes.byref(prog))
  return out


def _read(lib: ctypes.CDLL, prog: ctypes.c_void_p, what: str) -> str:
  getattr(lib, f"nvrtcGet{what}Size")(prog, ctypes.byref(size := ctypes.c_size_t()))
  getattr(lib, f"nvrtcGet{what}")(prog, buf := ctypes.create_string_buffer(size.value))
  return buf.value.decode(errors="replace")


def _check(lib: ctypes.CDLL, status: int, k: Kernel, arch: str, log: str = "") -> None:
  if status != 0:
    raise CompileError(f"NVRTC could not compile kernel {k.name!r} for {arch}: {lib.nvrtcGetErrorString(status).decode()}\n{log}")


# ---------------------------------------------------------------- files

@dataclass(frozen=True)
class KernelSummary:
  target: str
  out_dir: Path
  count: int
  bytes: int
  files: tuple[Path, ...]
  compiled: bool
  note: str

  def __str__(self) -> str: return f"{self.count} {self.target} kernels, {self.bytes} bytes in {self.out_dir}: {self.note}"


def write_kernels(kernels: list[Kernel], out_dir: str | os.PathLike, target: str, arch: str = "sm_80") -> KernelSummary:
  """One file per kernel, named by order and kernel name; CUDA is also compiled to .ptx files when NVRTC is here."""
  ext = _language(target)[2]
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  files = [_write(out / f"{i:02d}_{k.name}{ext}", k.source) for i, k in enumerate(kernels)]
  compiled, note = False, "rendered, not compiled (only CUDA is compile-checked)"
  if target.lower() == "cuda":
    try:
      files += [_write(out / f"{i:02d}_{k.name}.ptx", k.source) for i, k in enumerate(compile_cuda(kernels, arch))]
      compiled, note = True, f"compile-checked: NVRTC {'.'.join(map(str, nvrtc_version()))} compiled each to PTX for {arch}"
    except NVRTCNotFound as e: note = f"not compiled: {e}"
  return KernelSummary(target.lower(), out, len(kernels), sum(f.stat().st_size for f in files), tuple(files), compiled, note)


def _write(path: Path, text: str) -> Path:
  path.write_text(text)
  return path
