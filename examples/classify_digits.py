"""Classify handwritten digits with the bundled Vision Transformer (8 x 8 greyscale, white ink on black, as
scikit-learn's load_digits stores them), and show where its class token looked (attention rollout).

    python examples/classify_digits.py digit.png other.npy          # your own images (--resize for other sizes)
    python examples/classify_digits.py --held-out 10 --out pngs/     # needs scikit-learn: 10 held-out digits as PNGs

With --held-out N the first N digits of the held-out split (never seen in training) are written as PNGs into --out,
then classified from those files, as any image would be.
"""
import argparse
import os
import sys

import numpy as np

import tfm
from tfm.apps.image_attention import image_attention

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("images", nargs="*", help="image files (PNG, JPEG, ...) or .npy arrays")
parser.add_argument("--held-out", type=int, default=0, metavar="N", help="write N held-out digits as PNGs and classify them")
parser.add_argument("--out", default="digits", help="folder for the --held-out PNGs (default: digits)")
parser.add_argument("--resize", action="store_true", help="resize images to 8 x 8 instead of refusing other sizes")
parser.add_argument("--device", default="auto", help="backend, as `tfm backends` lists them (default: auto)")
args = parser.parse_args()

paths, truth = list(args.images), {}
try:
  if args.held_out:
    from PIL import Image
    from tfm.training.digits import DIGIT_MAX, digits_split
    split = digits_split()
    os.makedirs(args.out, exist_ok=True)
    for i in range(min(args.held_out, len(split.test_labels))):
      path = os.path.join(args.out, f"held-out-{i:03d}.png")
      Image.fromarray(np.round(split.test_images[i] / DIGIT_MAX * 255).astype(np.uint8)).save(path)
      paths.append(path)
      truth[path] = str(split.test_labels[i])
  if not paths: parser.error("give images to classify, or --held-out N")
  classifier = tfm.Classifier.bundled(args.device)
  results = classifier.classify(paths, top_k=3, resize=args.resize)
  for path, top in zip(paths, results):
    att = image_attention(classifier, path, resize=args.resize)
    row, col = divmod(int(att.class_map.argmax()), att.class_map.shape[1])
    mark = "" if path not in truth else ("  right" if top[0].label == truth[path] else f"  WRONG (it is {truth[path]})")
    print(f"{path}: " + ", ".join(f"{p.label} ({p.probability:.1%})" for p in top) +
          f"; the class token looked most at patch row {row}, column {col}{mark}")
except tfm.TfmError as e:
  sys.exit(f"classify_digits.py: {e}")
if truth:
  right = sum(top[0].label == truth[p] for p, top in zip(paths, results) if p in truth)
  print(f"{right} of {len(truth)} held-out digits right")
