"""The model: attention and the KV cache, the layers, linear maps (float, int8, packed), the encoder-decoder
Transformer and the Vision Transformer, and what the two share (base)."""
