"""Importers: foreign checkpoints into tfm's layers (torch.nn.Transformer state dicts, Marian / opus-mt folders, Hugging
Face ViT folders); `from_pretrained` picks the importer from a folder's config.json."""
from tfm.interop.folders import convert_folder, from_pretrained
from tfm.interop.mapping import Conversion
from tfm.interop.marian import convert_marian
from tfm.interop.vit import convert_vit
from tfm.interop.torch_transformer import TorchTransformer, convert_torch_transformer, load_stacks, load_torch_transformer

__all__ = ["Conversion", "convert_folder", "convert_marian", "convert_vit", "from_pretrained", "TorchTransformer", "convert_torch_transformer",
           "load_stacks", "load_torch_transformer"]
