"""Files a model lives in: safetensors arrays (stored), whole models (weights), tokenizers, images and audio."""
