"""The CPU that tfm compiles its own kernels for, decided in one place: how many float32 lanes one vector register
holds (from the CPU's flags) and how many cores a kernel is split over. Every CPU kernel tfm writes sizes its register
tiles from these (tfm.runtime.gemm), so an AVX2 machine and an AVX-512 machine each get tiles of their own width.
"""
from __future__ import annotations

import functools

from tinygrad import Device


@functools.cache
def cpu_flags() -> frozenset[str]:
  """The CPU's feature flags as Linux reports them (/proc/cpuinfo: x86 `flags`, ARM `Features`); empty elsewhere."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(("flags", "Features")): return frozenset(line.split(":", 1)[1].split())
  except OSError: pass
  return frozenset()


def vector_floats(flags: frozenset[str] | None = None) -> int:
  """float32 lanes of one vector register: 16 with AVX-512 (avx512f), 8 with AVX2 and FMA, else 4 (NEON, SSE, unknown).
  clang compiles tinygrad's CPU kernels with -march=native, so the flags of this machine are the ones the code uses."""
  flags = cpu_flags() if flags is None else flags
  if "avx512f" in flags: return 16
  if "avx2" in flags and "fma" in flags: return 8
  return 4


def cores(device: str) -> int:
  """How many per-core slices a kernel on this device can be split into (tinygrad's THREAD option): the CPU's cores as
  tinygrad counts them (NUM_CPU_THREADS), else 1."""
  renderer = Device[device].renderer
  # tinygrad-0.14: renderer.has_threads and global_max[0] give the THREAD option's split (NUM_CPU_THREADS on CPU)
  return renderer.global_max[0] if renderer.has_threads and renderer.global_max else 1


@functools.cache
def l1_data_bytes() -> int:
  """The level-1 data cache of one core, in bytes, as Linux reports it (/sys/devices/system/cpu/cpu0/cache); 32 KiB
  (the size on the x86 and ARM cores tfm has met) where it is not reported."""
  from pathlib import Path
  for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
    try:
      if (index / "level").read_text().strip() == "1" and (index / "type").read_text().strip() in ("Data", "Unified"):
        size = (index / "size").read_text().strip().upper()
        return int(size[:-1]) * {"K": 1 << 10, "M": 1 << 20}[size[-1]] if size[-1] in "KM" else int(size)
    except (OSError, ValueError): continue
  return 32 << 10
