"""The compiled-program cache: what a model needs to run a step of one shape on one backend, kept on disk so that a new
process neither schedules nor lowers nor compiles it again.

An entry is the payload `tfm.runtime.replay` makes of a captured step: each kernel's compiled binary, its launch sizes and the
roles of the buffers it is launched with (a weight by name, a decode buffer by name, scratch memory by size), never the
weights themselves. Entries are keyed by everything that changes the kernels: the step and its shapes, the model's
config and dtype, the backend and a fingerprint of its hardware, drivers and compiler (`backends.machine`), tinygrad's
version and settings, and tfm's own source. A file is used only when its key is the one asked for and its checksum
holds; a stale, truncated or foreign one is dropped with a warning and rebuilt. Files are written atomically; the
least recently used are removed past TFM_CACHE_MAX_MB (default 1024) megabytes.

Where: `backends.machine.cache_dir()` (TFM_CACHE_DIR, else the platform's cache folder), under programs/.
TFM_CACHE=0 switches it off. `tfm cache info` and `tfm cache clear` show and empty it.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from backends import switches
from backends.machine import cache_dir, cache_enabled, fingerprint
from tfm.files import atomic_write

MAGIC = b"tfm-compiled-step 1\n"
SUFFIX = ".step"
# tinygrad-0.14: its settings (ContextVar names) that do not change a kernel's code: left out of the key, so a debug run reuses entries
NOT_IN_KEY = {"DEBUG", "PROFILE", "VIZ", "CACHELEVEL", "CACHEDB", "CCACHE", "CAPTURE_PROCESS_REPLAY", "TRACEMETA",
              "TFM_BEAM_LOOKUP_ONLY_STATS", "TIMEOUT"}


class CacheWarning(UserWarning):
  """A cache entry was unusable and is rebuilt (the message says why)."""


@dataclass
class Stats:
  """This process's use of the cache."""
  hits: int = 0      # entries found and used
  misses: int = 0    # entries looked for and not there (or unusable): compiled instead
  stored: int = 0    # entries written


stats = Stats()
_paused = [0]   # blocks of `paused()` open in this process


@contextlib.contextmanager
def paused():
  """Neither look up nor store entries during the block (`tfm tune` times every kernel compiled anew)."""
  _paused[0] += 1
  try: yield
  finally: _paused[0] -= 1


def _in_use() -> bool: return cache_enabled() and not _paused[0]


def programs_dir() -> Path: return cache_dir() / "programs"


def max_bytes() -> int:
  return switches.cache_max_bytes()


@functools.cache
def _tfm_source() -> str:
  """sha256 of tfm's own modules: an entry made by other code is never replayed."""
  root = Path(__file__).resolve().parent
  h = hashlib.sha256()
  for path in sorted(root.rglob("*.py")):
    h.update(str(path.relative_to(root)).encode())
    h.update(path.read_bytes())
  return h.hexdigest()


def _settings() -> dict:
  """tinygrad's current settings (Context variables), which pick optimisations, renderers and tuned kernels. A few
  variables are defined by modules tinygrad imports when a device opens; every step compiles or is restored after
  its model's device has opened, so a process that stored an entry and one that looks it up see the same set."""
  from tinygrad.helpers import ContextVar
  # tinygrad-0.14: ContextVar._cache (private) is the registry of every setting
  return {k: v.value for k, v in sorted(ContextVar._cache.items()) if k not in NOT_IN_KEY and isinstance(v.value, (int, float, str))}


def key_for(parts: dict, target: str) -> dict:
  """The full key of an entry: the caller's parts (step, shapes, config, dtype) and what the kernels depend on besides.
  Call it where the step compiles (inside the model's on_device()), so that the settings are the ones in force."""
  from tinygrad import Device
  # tinygrad-0.14: runtimes define more ContextVars when imported; Device.DEFAULT imports them all
  Device.DEFAULT   # noqa: B018 - resolving it imports every runtime, which defines more settings: before they are read
  return {**parts, "backend": fingerprint(target), "tinygrad": version("tinygrad"), "settings": _settings(),
          "tfm": _tfm_source(), "python": sys.version_info[:2]}


def _encode(key: dict) -> bytes: return json.dumps(key, sort_keys=True, default=str).encode()


def _path(key_bytes: bytes) -> Path: return programs_dir() / (hashlib.sha256(key_bytes).hexdigest()[:40] + SUFFIX)


def _drop(path: Path, why: str) -> None:
  warnings.warn(f"compiled-program cache: {path.name} {why}; compiling it again", CacheWarning, stacklevel=3)
  try: path.unlink()
  except OSError: pass


def lookup(key: dict) -> bytes | None:
  """The payload stored under key, or None (not there, switched off, or unusable: then dropped, with a warning)."""
  if not _in_use(): return None
  payload = _read(key)
  if payload is None: stats.misses += 1
  else: stats.hits += 1
  return payload


def _read(key: dict) -> bytes | None:
  key_bytes = _encode(key)
  path = _path(key_bytes)
  try: data = path.read_bytes()
  except OSError: return None
  head = len(MAGIC)
  if not data.startswith(MAGIC) or len(data) < head + 8 + 32:
    _drop(path, "is not a tfm cache entry or is truncated")
    return None
  n = int.from_bytes(data[head:head + 8], "little")
  if len(data) < head + 40 + n:
    _drop(path, "is truncated")
    return None
  stored_key, digest, payload = data[head + 8:head + 8 + n], data[head + 8 + n:head + 40 + n], data[head + 40 + n:]
  if stored_key != key_bytes:
    _drop(path, "was made for another model, backend or version")
    return None
  if hashlib.sha256(payload).digest() != digest:
    _drop(path, "is damaged (its checksum does not match)")
    return None
  try: os.utime(path)   # least recently used goes first when the cache is full
  except OSError: pass
  return payload


def discard(key: dict, why: str) -> None:
  """Drop the entry under key (its payload could not be used), with a warning."""
  stats.misses, stats.hits = stats.misses + 1, stats.hits - 1   # it was counted as found
  _drop(_path(_encode(key)), why)


_writing = threading.Lock()


def store(key: dict, payload: bytes) -> None:
  """Keep payload under key (atomically), then trim the cache to its size bound. A cache that cannot be written
  (read-only, full disk) is skipped with a warning: the step still runs."""
  if not _in_use(): return
  key_bytes = _encode(key)
  blob = MAGIC + len(key_bytes).to_bytes(8, "little") + key_bytes + hashlib.sha256(payload).digest() + payload
  path = _path(key_bytes)
  def write(tmp: str) -> None:
    with open(tmp, "wb") as f: f.write(blob)
  with _writing:
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      atomic_write(path, write)
      stats.stored += 1
      _trim(max_bytes())
    except OSError as e:
      warnings.warn(f"compiled-program cache: cannot write {path.parent} ({e.strerror or e}); set TFM_CACHE_DIR to a "
                    f"writable folder, or TFM_CACHE=0", CacheWarning, stacklevel=2)


def _entries() -> list[Path]:
  try: return [p for p in programs_dir().iterdir() if p.suffix == SUFFIX]
  except OSError: return []


def _trim(limit: int) -> None:
  """Remove the least recently used entries until the cache holds at most `limit` bytes."""
  sized = []
  for p in _entries():
    try: st = p.stat()
    except OSError: continue
    sized.append((st.st_mtime, st.st_size, p))
  total = sum(size for _, size, _ in sized)
  for _, size, p in sorted(sized, key=lambda e: e[0]):
    if total <= limit: break
    try: p.unlink()
    except OSError: continue
    total -= size


@dataclass
class Info:
  folder: Path
  enabled: bool
  entries: int
  bytes: int
  limit: int

  def summary(self) -> str:
    state = "on" if self.enabled else "off (TFM_CACHE=0)"
    return (f"compiled-program cache: {state}\n  folder:  {self.folder}\n  entries: {self.entries} compiled steps, "
            f"{self.bytes / 2**20:.1f} MiB of at most {self.limit / 2**20:.0f} MiB (TFM_CACHE_MAX_MB)")


def info() -> Info:
  sizes = []
  for p in _entries():
    try: sizes.append(p.stat().st_size)
    except OSError: pass
  return Info(programs_dir(), cache_enabled(), len(sizes), sum(sizes), max_bytes())


def clear() -> int:
  """Remove every entry; returns how many were removed."""
  removed = 0
  for p in _entries():
    try: p.unlink(); removed += 1
    except OSError: pass
  return removed
