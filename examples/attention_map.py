"""Draw where the decoder looked: the cross-attention of one translation as a PNG heatmap (source tokens across,
output tokens down), the chosen layer's mean over heads and one panel per head. Needs matplotlib: pip install 'tfm[viz]'.

    python examples/attention_map.py "3rd of March, 2021" --out map.png
    python examples/attention_map.py "12.10.2030" --layer 0 --model runs/dates/model.safetensors --out map.png
"""
import argparse
import sys

import tfm
from tfm.apps.attention_map import cross_attention, plot

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("text", help="the text to translate")
parser.add_argument("--out", default="attention.png", help="the PNG to write (default: attention.png)")
parser.add_argument("--layer", type=int, default=-1, help="decoder layer, from 0; -1 is the last (default: -1)")
parser.add_argument("--max-len", type=int, default=None, help="most tokens to generate (default: the model's setting)")
parser.add_argument("--model", default=None, help="a tfm .safetensors file with its vocab beside it (default: the bundled model)")
args = parser.parse_args()

try:
  translator = tfm.Translator.load(args.model) if args.model else tfm.Translator.bundled()
  amap = cross_attention(translator, args.text, max_len=args.max_len)
  plot(amap, args.out, layer=args.layer)
except tfm.TfmError as e:
  sys.exit(f"attention_map.py: {e}")
print(f"{args.text!r} -> {amap.translation!r}; wrote {args.out}")
# the same picture in text: the source token each output token attended to most (mean over the layer's heads)
mean = amap.layer(args.layer).mean(0)  # (output tokens, source tokens)
for token, row in zip(amap.output, mean):
  print(f"  {token!r:>8} <- {amap.source[row.argmax()]!r} ({row.max():.2f})")
