"""Translate with an opus-mt (Marian) checkpoint folder you already have, e.g. one saved by `save_pretrained` or
downloaded from a model hub: config.json, model.safetensors (or pytorch_model.bin), source.spm, target.spm, vocab.json.

    python examples/marian_translate.py ~/models/opus-mt-en-de "Hello, world." "How are you?"
    python examples/marian_translate.py ~/models/opus-mt-en-de --beam-size 1 --device CL < sentences.txt
"""
import argparse
import sys
import time

import tfm

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("folder", help="the Marian checkpoint folder")
parser.add_argument("texts", nargs="*", help="sentences to translate (default: one per line from stdin)")
parser.add_argument("--beam-size", type=int, default=None, help="beam width (default: the checkpoint's generation_config, else 1)")
parser.add_argument("--device", default="auto", help="backend, as `tfm backends` lists them (default: auto)")
args = parser.parse_args()

texts = args.texts or [line.strip() for line in sys.stdin if line.strip()]
try:
  translator = tfm.Translator.load(args.folder, device=args.device)
  start = time.perf_counter()
  translations = translator.translate(texts, beam_size=args.beam_size)
except (tfm.TfmError, ValueError) as e:  # a folder that is not a Marian checkpoint, a backend that does not run, ...
  sys.exit(f"marian_translate.py: {e}")
for text, out in zip(texts, translations):
  print(f"{text}\t{out}")
print(f"{len(texts)} sentences in {time.perf_counter() - start:.2f} s on {translator.model.device}", file=sys.stderr)
