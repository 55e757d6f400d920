"""`tfm backends` and `tfm kernels` as a user runs them."""
from __future__ import annotations

import pytest

import backends
from tfm.cli import main


def test_backends_prints_a_row_per_backend_with_its_status(capsys):
  assert main(["backends"]) == 0
  rows = {line.split("|")[0].strip(): line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines()[1:]}
  assert list(rows) == list(backends.NAMES)
  assert set(rows.values()) <= {backends.RUNS, backends.COMPILE_ONLY, backends.UNAVAILABLE}
  for name in ("CPU", "CL", "METAL"): assert (rows[name] == backends.RUNS) == backends.probe(name).runs, name


def test_kernels_writes_one_file_per_kernel_and_compiles_cuda(tmp_path, capsys):
  from backends.kernels import nvrtc_path
  assert main(["kernels", "--target", "cuda", "--out", str(tmp_path)]) == 0
  sources = sorted(tmp_path.glob("*.cu"))
  assert len(sources) >= 10 and all("__global__" in p.read_text() for p in sources)
  summary = capsys.readouterr().out
  assert f"{len(sources)} cuda kernels" in summary
  if nvrtc_path():
    assert "compile-checked" in summary and len(list(tmp_path.glob("*.ptx"))) == len(sources)


def test_kernels_refuses_an_unknown_target(capsys):
  with pytest.raises(SystemExit) as exit_:
    main(["kernels", "--target", "vulkan", "--out", "x"])
  assert exit_.value.code == 2 and "invalid choice: 'vulkan'" in capsys.readouterr().err
