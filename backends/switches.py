"""Every environment variable tfm reads of its own (TFM_*), read here and nowhere else, each when it is needed (so a
change in the environment, or a test's monkeypatch, counts from the next call). docs/ARCHITECTURE.md has the table.

| variable | default | what it does |
|---|---|---|
| TFM_DEVICE | (unset) | the backend `device="auto"` picks: a name or a list, e.g. CL or CUDA,CPU |
| TFM_PROBE_TIMEOUT | 60 | seconds a backend's probe may take before it is reported unavailable |
| TFM_CACHE | 1 | 0 switches tfm's caches off: compiled programs and probe results |
| TFM_CACHE_DIR | platform cache | where tfm's caches live (backends.machine.cache_dir) |
| TFM_CACHE_MAX_MB | 1024 | the compiled-program cache's size bound; least recently used entries go first |
| TFM_PACKED | 1 | 0 computes CPU products from the plain weights instead of packed copies |
| TFM_TUNED | 1 | 0 ignores the kernels `tfm tune` stored for a backend |
| TFM_CORES | 1 | 0 runs a CPU kernel's per-core slices one after the other, as tinygrad does, not at once |
"""
from __future__ import annotations

import os

OFF = ("0", "false", "no", "off")


def _on(name: str) -> bool: return os.environ.get(name, "1").strip().lower() not in OFF


def device() -> str: return os.environ.get("TFM_DEVICE", "").strip()


def probe_timeout() -> float: return float(os.environ.get("TFM_PROBE_TIMEOUT", "60"))


def cache_on() -> bool: return _on("TFM_CACHE")


def cache_dir() -> str | None: return os.environ.get("TFM_CACHE_DIR") or None


def cache_max_bytes() -> int:
  try: return int(float(os.environ.get("TFM_CACHE_MAX_MB", "1024")) * 2**20)
  except ValueError: return 1024 * 2**20


def packed() -> bool: return _on("TFM_PACKED")


def tuned() -> bool: return _on("TFM_TUNED")


def cores() -> bool: return _on("TFM_CORES")
