"""Files and folders written whole or not at all (a temp file or folder beside the target, renamed into place), the
JSON files of checkpoint folders read, and where the models that ship with tfm are."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Callable

from tfm.errors import WeightsError

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")   # tfm/assets/README.md says how each was made
BUNDLED_MODEL = os.path.join(ASSETS, "dates.safetensors")        # the dates translator, with its character vocabulary:
BUNDLED_VOCAB = os.path.join(ASSETS, "dates.vocab.json")
BUNDLED_CLASSIFIER = os.path.join(ASSETS, "digits.safetensors")  # the digits image classifier (tfm.training.digits)


def read_json(path: str | os.PathLike, fix: str = "download or save the checkpoint folder again") -> Any:
  """A checkpoint folder's JSON file (config.json, vocab.json, ...), or a WeightsError naming it and `fix`."""
  try:
    with open(path, encoding="utf-8") as f: return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise WeightsError(f"{os.fspath(path)} is not valid JSON ({e}); {fix}") from None


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
  """Call write(tmp) on a temp file beside path, then rename it into place: a crash never leaves a half-written file."""
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist; create it first")
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
  os.close(fd)
  try:
    write(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; the result gets the permissions open() would give
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


def atomic_folder(path: str | os.PathLike, fill: Callable[[str], None]) -> None:
  """Call fill(tmp) on a temp folder beside path, then rename it into place, replacing a folder already there: a
  crash never leaves a half-written folder under path."""
  path = os.fspath(path)
  tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
  try:
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes the folder private; the result gets the permissions mkdir gives
    fill(tmp)
    if os.path.exists(path): shutil.rmtree(path)
    os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _umask() -> int:
  umask = os.umask(0o022)
  os.umask(umask)
  return umask
