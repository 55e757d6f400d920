"""The synthetic signals behind tests/fixtures/whisper_features.npz: each made from a short recipe, so that the fixture
holds only the expected features and tests/test_audio.py regenerates the signal (numpy's PCG64 stream is the same on
every platform and numpy version the project uses)."""
from __future__ import annotations

import numpy as np

RATE = 16000
# name: (kind, seconds, parameters)
SIGNALS = {
  "tone_1s": ("tone", 1, {"hz": 440.0, "amplitude": 0.5}),
  "chirp_1s": ("chirp", 1, {"from_hz": 100.0, "to_hz": 7900.0, "amplitude": 0.5}),
  "noise_1s": ("noise", 1, {"seed": 0, "scale": 0.1}),
  "silence_1s": ("silence", 1, {}),
  "clipped_1s": ("clipped", 1, {"hz": 220.0, "amplitude": 3.0, "clip": 1.0}),
  "tone_45s": ("tone", 45, {"hz": 440.0, "amplitude": 0.5}),
  "chirp_45s": ("chirp", 45, {"from_hz": 100.0, "to_hz": 7900.0, "amplitude": 0.5}),
  "noise_45s": ("noise", 45, {"seed": 1, "scale": 0.1}),
}


def signal(name: str) -> np.ndarray:
  """The float32 samples at 16 kHz of SIGNALS[name]."""
  kind, seconds, p = SIGNALS[name]
  t = np.arange(seconds * RATE) / RATE
  if kind == "tone": x = p["amplitude"] * np.sin(2 * np.pi * p["hz"] * t)
  elif kind == "chirp": x = p["amplitude"] * np.sin(2 * np.pi * (p["from_hz"] * t + (p["to_hz"] - p["from_hz"]) / (2 * seconds) * t * t))
  elif kind == "noise": x = p["scale"] * np.random.default_rng(p["seed"]).standard_normal(len(t))
  elif kind == "silence": x = np.zeros(len(t))
  elif kind == "clipped": x = np.clip(p["amplitude"] * np.sin(2 * np.pi * p["hz"] * t), -p["clip"], p["clip"])
  else: raise ValueError(f"unknown signal kind {kind!r}")
  return x.astype(np.float32)


def frames_kept(seconds: int) -> np.ndarray:
  """The frames whose features the fixture keeps (all 3000 would be 1 MB a signal): a 1 s signal's sound fills frames
  0..101, so all of those and every 100th after; a longer one every 25th and the last 10 (the reflect-padded end)."""
  if seconds == 1: return np.unique(np.r_[np.arange(0, 104), np.arange(104, 3000, 100), 2999])
  return np.unique(np.r_[np.arange(0, 3000, 25), np.arange(2990, 3000)])
