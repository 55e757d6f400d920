"""Transcribe speech with a Whisper checkpoint folder you already have (config.json, model.safetensors, tokenizer.json,
as transformers saves it; e.g. `hf download openai/whisper-tiny --local-dir whisper-tiny`).

    python examples/transcribe.py whisper-tiny talk.wav                  # text, the language detected
    python examples/transcribe.py whisper-tiny talk.wav --timestamps     # timed segments
    python examples/transcribe.py whisper-tiny                           # a 2-second tone, to try the model
"""
import argparse
import sys
import time

import numpy as np

import tfm

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("folder", help="the Whisper checkpoint folder")
parser.add_argument("audio", nargs="?", help="a WAV file or a .npy array of 16 kHz samples (default: a 2 s tone of 440 Hz)")
parser.add_argument("--timestamps", action="store_true", help="print timed segments")
parser.add_argument("--language", default=None, help="the language spoken, e.g. en (default: detected)")
parser.add_argument("--max-len", type=int, default=None, help="most tokens per 30-s window (default: the model's)")
parser.add_argument("--device", default="auto", help="backend, as `tfm backends` lists them (default: auto)")
args = parser.parse_args()

audio = args.audio or (0.5 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32)
try:
  transcriber = tfm.Transcriber.load(args.folder, device=args.device)
  start = time.perf_counter()
  transcript = transcriber.transcribe(audio, language=args.language, timestamps=args.timestamps, max_len=args.max_len)
except tfm.TfmError as e:  # not a Whisper folder, an audio format tfm does not read, ...
  sys.exit(f"transcribe.py: {e}")
print(f"language: {transcript.language}")
for segment in transcript.segments:
  print(f"[{segment.start:7.2f} -> {segment.end:7.2f}] {segment.text.strip()!r}")
print(f"{transcript.duration:.1f} s of audio in {time.perf_counter() - start:.2f} s on {transcriber.model.device}", file=sys.stderr)
