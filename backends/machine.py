"""What this machine is, for the caches that outlive a process: where they live, and a fingerprint of a backend's
hardware, drivers and compiler, so that a result cached under another one is never used.

Location: $TFM_CACHE_DIR, else the platform's cache folder (Linux and BSD: $XDG_CACHE_HOME/tfm or ~/.cache/tfm;
macOS: ~/Library/Caches/tfm; Windows: %LOCALAPPDATA%/tfm/cache). TFM_CACHE=0 switches every tfm cache off.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import platform
import shutil
import sys
from pathlib import Path

from backends import switches


def cache_enabled() -> bool: return switches.cache_on()


def cache_dir() -> Path:
  """The folder of tfm's caches (which may not exist yet)."""
  if given := switches.cache_dir(): return Path(given).expanduser()
  home = Path.home()
  if sys.platform == "darwin": return home / "Library" / "Caches" / "tfm"
  if sys.platform == "win32": return Path(os.environ.get("LOCALAPPDATA", home / "AppData" / "Local")) / "tfm" / "cache"
  return Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "tfm"


def file_identity(path: str | None) -> list | None:
  """A file's identity for a fingerprint: its path, size and modification time (a reinstall changes them)."""
  if not path: return None
  try: st = os.stat(path)
  except OSError: return None
  return [os.path.realpath(path), st.st_size, st.st_mtime_ns]


@functools.cache
def _cpu() -> str:
  """The processor's model and instruction-set flags (clang compiles for the native CPU)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f: text = f.read(65536)
    fields = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    info = {k.strip(): v.strip() for k, v in fields.items() if k.strip() in ("model name", "flags", "Features", "CPU part")}
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]
  except OSError:
    return f"{platform.processor()}-{platform.machine()}"


def driver_files(kind: str) -> list:
  """The files a backend's driver and compiler come from, as (path, size, mtime)."""
  if kind == "CPU": return [file_identity(shutil.which(os.environ.get("CC", "clang")))]
  if kind == "CL": return [file_identity(p) for p in sorted(glob.glob("/etc/OpenCL/vendors/*.icd"))]
  if kind == "WEBGPU":   # Dawn's library and the Vulkan drivers it may run on
    from backends.webgpu import vulkan_drivers
    return [file_identity(os.environ.get("WEBGPU_PATH"))] + [file_identity(p) for p in vulkan_drivers()]
  if kind in ("CUDA", "NV"): return [file_identity(p) for p in sorted(glob.glob("/usr/lib/*/libcuda.so*") + glob.glob("/proc/driver/nvidia/version"))]
  return []


def fingerprint(target: str) -> dict:
  """What kernels compiled for `target` (a tinygrad target string, "CPU", "CL", "CPU:LLVM") depend on, beyond tinygrad
  and the kernel's own source: the processor, the OS, Python, and the driver or compiler files of that backend."""
  kind = target.split(":")[0]
  return {"target": target, "machine": platform.machine(), "system": platform.system(), "python": sys.version,
          "cpu": _cpu(), "drivers": driver_files(kind) + ([file_identity(os.environ.get("LLVM_PATH"))] if "LLVM" in target else [])}
