"""Importers: foreign checkpoints into tfm's layers (torch.nn.Transformer state dicts, Hugging Face folders of Marian /
opus-mt, BART, mBART, Pegasus, M2M100 / NLLB and ViT); `from_pretrained` picks the importer from a folder's config.json."""
from tfm.interop.folders import convert_folder, from_pretrained
from tfm.interop.mapping import Conversion
from tfm.interop.seq2seq import convert as convert_seq2seq
from tfm.interop.vit import convert_vit
from tfm.interop.torch_transformer import TorchTransformer, convert_torch_transformer, load_stacks, load_torch_transformer

__all__ = ["Conversion", "convert_folder", "convert_seq2seq", "convert_vit", "from_pretrained", "TorchTransformer", "convert_torch_transformer",
           "load_stacks", "load_torch_transformer"]
