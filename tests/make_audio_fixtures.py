"""Write tests/fixtures/whisper_features.npz: what transformers' WhisperFeatureExtractor computes as input_features
(80 and 128 mel bins) for the synthetic signals of tests/audio_signals.py, and its mel filter banks, so that
tests/test_audio.py checks tfm.io.audio.log_mel and mel_filters without transformers installed.

    /path/to/venv-with-transformers/bin/python tests/make_audio_fixtures.py   # torch and transformers: only this script needs them

Made with transformers 5.25.0, torch 2.13.0+cpu, numpy 2.4.6 (the versions are also stored in the file). The
extractor runs its torch path (torch.stft in float32) when torch is installed, as here; the script also runs its
numpy path and prints how far the two are apart. Only a subset of each signal's 3000 frames is kept
(audio_signals.frames_kept), in float32, so the file stays small; the signals themselves are regenerated from their
recipes.

tests/fixtures/whisper_features.npz
  <signal>_<n_mels>    (n_mels, len(frames)) float32: input_features[0][:, frames]
  frames_<signal>      the frame indices kept
  filters_<n_mels>     (201, n_mels) float32: the extractor's mel_filters
  versions             "transformers=...,torch=...,numpy=..."
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
import transformers
from transformers import WhisperFeatureExtractor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from audio_signals import SIGNALS, frames_kept, signal  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "whisper_features.npz")


def main():
  arrays = {"versions": np.array(f"transformers={transformers.__version__},torch={torch.__version__},numpy={np.__version__}")}
  for n_mels in (80, 128):
    fe = WhisperFeatureExtractor(feature_size=n_mels)
    arrays[f"filters_{n_mels}"] = fe.mel_filters.astype(np.float32)
    for name, (_, seconds, _) in SIGNALS.items():
      x = signal(name)
      features = fe(x, sampling_rate=16000, return_tensors="np").input_features[0]
      assert features.shape == (n_mels, 3000), features.shape
      padded = np.pad(x, (0, max(0, 480000 - len(x))))[:480000]
      numpy_path = fe._np_extract_fbank_features(padded[None], "cpu")[0]
      print(f"{name:11s} {n_mels:3d} mels: torch path - numpy path max |diff| {np.abs(features - numpy_path).max():.2e}")
      frames = frames_kept(seconds)
      arrays[f"frames_{name}"] = frames.astype(np.int16)
      arrays[f"{name}_{n_mels}"] = np.ascontiguousarray(features[:, frames]).astype(np.float32)
  np.savez_compressed(OUT, **arrays)
  print(f"wrote {OUT}: {os.path.getsize(OUT) / 1024:.0f} KiB")


if __name__ == "__main__":
  main()
