"""The code passes the project's lint configuration (pyproject.toml [tool.ruff]), as `make lint` checks it."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
  ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
  if not Path(ruff).exists(): pytest.skip("ruff is not installed (pip install -e '.[test]')")
  proc = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stdout[-3000:]
