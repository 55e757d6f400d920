"""Translate dates written many ways into ISO 8601 with the model that ships with tfm.

    python examples/translate.py                          # a few samples
    python examples/translate.py "1st of May, 1999" "12.10.2030"
"""
import sys

import tfm

texts = sys.argv[1:] or ["3rd of March, 2021", "2021년 3월 3일", "Wednesday, March 3, 2021", "03.03.2021", "march 3rd, 2021"]
try:
  translator = tfm.Translator.bundled()
  translations = translator.translate(texts, beam_size=4)
except tfm.TfmError as e:  # no bundled model, a character outside its vocabulary, ...
  sys.exit(f"translate.py: {e}")
for text, iso in zip(texts, translations):
  print(f"{text:>28}  ->  {iso}")
