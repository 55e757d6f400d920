"""Shared test fixtures: tiny models with non-trivial weights, so that a dropped bias or gain shows in the output."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# the suite's own cache folders, never the user's: tfm's (compiled steps, probe results) and tinygrad's kernel cache
# (CACHEDB: compiled binaries, BEAM results), which tinygrad reads when it is imported, so set before the imports
# below. Set TFM_CACHE_DIR to keep them across runs. Under pytest-xdist (make test) the main process makes them before
# it starts the workers, which inherit them: a step one worker compiled, the others load
if "TFM_CACHE_DIR" not in os.environ:
  os.environ["TFM_CACHE_DIR"] = tempfile.mkdtemp(prefix="tfm-test-cache-")
  atexit.register(shutil.rmtree, os.environ["TFM_CACHE_DIR"], True)
os.environ.setdefault("CACHEDB", os.path.join(os.environ["TFM_CACHE_DIR"], "tinygrad-cache.db"))

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file
from tinygrad.nn.state import get_state_dict

from tfm.nn.base import unique_state
import tfm
from tfm.io import weights
from tfm.apps.subjects import random_arrays

DEVICE = "CPU"


def randomize(model: tfm.Transformer, seed: int = 0) -> tfm.Transformer:
  """Give every parameter (biases, LayerNorm gains and biases, the pad row) random, non-trivial values: the seeded
  weights `tfm compare` uses for the tiny config."""
  weights.assign(unique_state(model), random_arrays(model.config, seed), f"random weights (seed {seed})")
  return model


def copied_checkpoint(source: Path, folder: Path, change=None, config_change=None) -> Path:
  """A Hugging Face checkpoint folder copied to `folder`, its tensors passed through change(arrays) and config.json
  through config_change(dict): a checkpoint that differs from a committed fixture in one known way."""
  shutil.copytree(source, folder)
  if change:
    with safe_open(folder / "model.safetensors", framework="numpy") as f: arrays = {k: f.get_tensor(k) for k in f.keys()}
    change(arrays)
    save_file(arrays, folder / "model.safetensors", metadata={"format": "pt"})
  if config_change:
    hf = json.loads((folder / "config.json").read_text())
    config_change(hf)
    (folder / "config.json").write_text(json.dumps(hf))
  return folder


def state_numpy(model: tfm.Transformer) -> dict[str, np.ndarray]:
  return {k: v.numpy() for k, v in get_state_dict(model).items()}


@pytest.fixture(scope="session")
def tiny_config() -> tfm.TransformerConfig:
  return tfm.TransformerConfig.preset("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_config) -> tfm.Transformer:
  return randomize(tfm.Transformer(tiny_config, device=DEVICE))


@pytest.fixture(scope="session")
def batch() -> tuple[np.ndarray, np.ndarray]:
  """A source batch with padding (pad_id 0) and a target batch, both reused across tests to keep kernels cached."""
  src = np.array([[5, 9, 12, 33, 2, 0, 0], [7, 8, 9, 10, 11, 40, 2]], dtype=np.int32)
  tgt = np.array([[1, 14, 15, 16, 17], [1, 20, 21, 22, 23]], dtype=np.int32)
  return src, tgt
