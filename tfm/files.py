"""Files written whole or not at all: a temp file beside the target, renamed into place."""
from __future__ import annotations

import os
import tempfile
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
  """Call write(tmp) on a temp file beside path, then rename it into place: a crash never leaves a half-written file."""
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist; create it first")
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
  os.close(fd)
  umask = os.umask(0o022); os.umask(umask)
  try:
    write(tmp)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; the result gets the permissions open() would give
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp): os.unlink(tmp)
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  """Write text (UTF-8) to path atomically, creating its folder when missing."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  def write(tmp: str) -> None:
    with open(tmp, "w", encoding="utf-8") as f: f.write(text)
  atomic_write(path, write)
