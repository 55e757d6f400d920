"""The demo: a forward pass of a randomly initialised tiny Transformer on the selected backend."""
import numpy as np

import tfm

model = tfm.Transformer(tfm.TransformerConfig.preset("tiny"), device=None)
src = np.array([[5, 6, 7, 8, 2], [9, 10, 11, 2, 0]])
tgt = np.array([[1, 5, 6], [1, 9, 10]])
logits = model(src, tgt)
print(f"backend {model.device}: logits {tuple(logits.shape)}, finite: {bool(np.isfinite(logits.numpy()).all())}")
