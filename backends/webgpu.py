"""WebGPU through Dawn: where Dawn's library is, what Dawn needs to find a device, and which adapter it found.

tinygrad 0.14 loads Dawn from $WEBGPU_PATH, else from a system library called webgpu_dawn; PyPI's dawn-python keeps the
library inside its package (pydawn/lib/libwebgpu_dawn_<arch>.so, .dylib, .dll), where tinygrad looks only on Windows.
`prepare()` runs when `backends` is imported, before any tinygrad device opens: it points WEBGPU_PATH at that library
unless the user set one. On Linux Dawn runs on Vulkan: a GPU's driver, or Mesa's lavapipe ("llvmpipe") on the CPU.
"""
from __future__ import annotations
import ctypes, glob, importlib.util, os, platform, sys
from pathlib import Path

INSTALL = "pip install dawn-python"
VULKAN_INSTALL = "apt install mesa-vulkan-drivers (lavapipe, Vulkan on the CPU) or your GPU's Vulkan driver"
# where the Vulkan loader looks for drivers (ICD manifests) when VK_ICD_FILENAMES / VK_DRIVER_FILES name none
ICD_DIRS = ("/usr/share/vulkan/icd.d", "/usr/local/share/vulkan/icd.d", "/etc/vulkan/icd.d")


def dawn_library() -> Path | None:
  """Dawn's library in the installed dawn-python package, for this OS and processor; None when there is none."""
  spec = importlib.util.find_spec("pydawn")   # found, not imported: importing pydawn loads the library
  if spec is None or not spec.submodule_search_locations: return None
  machine = platform.machine()
  name = {"linux": f"libwebgpu_dawn_{machine}.so", "darwin": f"libwebgpu_dawn_{machine}.dylib", "win32": "libwebgpu_dawn.dll"}.get(sys.platform)
  lib = Path(next(iter(spec.submodule_search_locations))) / "lib" / (name or "")
  return lib if name and lib.is_file() else None


def prepare() -> None:
  """Point tinygrad at dawn-python's library (a WEBGPU_PATH the user set wins) and keep Dawn's start quiet."""
  if not os.environ.get("WEBGPU_PATH") and (lib := dawn_library()) is not None: os.environ["WEBGPU_PATH"] = str(lib)
  # Mesa's device-select Vulkan layer connects to the Wayland display to find the GPU that drives the screen; without a
  # valid XDG_RUNTIME_DIR (a server, a container) libwayland prints "error: XDG_RUNTIME_DIR is invalid or not set in
  # the environment." twice per process. There is no screen to find then: NODEVICE_SELECT=1 skips the layer (Dawn
  # picks its adapter itself), and a user's own setting is kept
  if sys.platform == "linux" and not os.path.isdir(os.environ.get("XDG_RUNTIME_DIR") or "/nonexistent"):
    os.environ.setdefault("NODEVICE_SELECT", "1")


def vulkan_drivers() -> list[str]:
  """The Vulkan driver manifests the loader will read (none: Dawn finds no adapter on Linux)."""
  named = os.environ.get("VK_DRIVER_FILES") or os.environ.get("VK_ICD_FILENAMES")
  if named: return [p for p in named.split(os.pathsep) if os.path.exists(p)]
  return sorted(p for d in ICD_DIRS for p in glob.glob(os.path.join(d, "*.json")))


def diagnose() -> str | None:
  """What is missing for WebGPU to run, with the fix; None when nothing known is. Run in the probe's subprocess."""
  from tinygrad.runtime.autogen import webgpu
  if getattr(webgpu.dll, "wgpuCreateInstance", None) is None:
    given = os.environ.get("WEBGPU_PATH")
    if given and not os.path.isfile(given): return f"WEBGPU_PATH={given} is not a file: point it at libwebgpu_dawn, or unset it and {INSTALL}"
    return f"Dawn's library (libwebgpu_dawn) not found: {INSTALL} (or set WEBGPU_PATH=/path/to/libwebgpu_dawn)"
  if sys.platform == "linux":
    try: ctypes.CDLL("libvulkan.so.1")
    except OSError: return f"no Vulkan loader (libvulkan.so.1), which Dawn needs on Linux: {VULKAN_INSTALL}"
    if not vulkan_drivers(): return f"no Vulkan driver (no ICD manifest in {', '.join(ICD_DIRS)}): {VULKAN_INSTALL}"
  return None


def adapter() -> dict:
  """The adapter Dawn picks, as tinygrad's WEBGPU device asks for it (high performance): {"name", "cpu", "backend"}.
  Raises RuntimeError naming the problem when there is none."""
  from tinygrad.runtime.autogen import webgpu as w
  from tinygrad.runtime.ops_webgpu import InstanceRequestAdapter, from_wgpu_str, instance
  hint = f": {VULKAN_INSTALL}" if sys.platform == "linux" else ""
  try: handle = InstanceRequestAdapter(instance, w.WGPURequestAdapterOptions(powerPreference=w.WGPUPowerPreference_HighPerformance))
  except RuntimeError as e: raise RuntimeError(f"no WebGPU adapter ({str(e).strip() or 'Dawn gave no reason'}){hint}") from None
  info = w.WGPUAdapterInfo()
  w.wgpuAdapterGetInfo(handle, info)
  name = from_wgpu_str(info.device) or from_wgpu_str(info.description) or "unnamed adapter"
  backend = w.enum_WGPUBackendType.get(info.backendType, "").removeprefix("WGPUBackendType_")
  cpu = info.adapterType == w.WGPUAdapterType_CPU
  w.wgpuAdapterInfoFreeMembers(info)
  w.wgpuAdapterRelease(handle)
  # with drivers that find no device (radeon's without its GPU, say) Dawn hands out its Null backend, which computes
  # nothing: a 2x2 matmul on it summed to 101410704
  if backend == "Null": raise RuntimeError(f"no WebGPU adapter: Dawn's Vulkan drivers found no device, only its Null backend{hint}")
  return {"name": name + (" (lavapipe: Vulkan on the CPU)" if cpu and "llvmpipe" in name else ""), "cpu": cpu, "backend": backend}
