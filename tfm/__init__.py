"""tfm: the Transformer of "Attention Is All You Need", written once on tinygrad and run on any backend it reaches."""
from tfm.config import TransformerConfig
from tfm.errors import ConfigError, InputError, TfmError, WeightsError
from tfm.model import Transformer

__all__ = ["TransformerConfig", "Transformer", "TfmError", "ConfigError", "InputError", "WeightsError"]
__version__ = "0.1.0"
