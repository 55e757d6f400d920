"""Importers: foreign checkpoints into tfm's layers (torch.nn.Transformer state dicts, Marian / opus-mt folders)."""
from tfm.interop.mapping import Conversion
from tfm.interop.marian import convert_marian, from_pretrained
from tfm.interop.torch_transformer import TorchTransformer, convert_torch_transformer, load_stacks, load_torch_transformer

__all__ = ["Conversion", "convert_marian", "from_pretrained", "TorchTransformer", "convert_torch_transformer",
           "load_stacks", "load_torch_transformer"]
