"""tfm: the Transformer of "Attention Is All You Need", written once on tinygrad and run on any backend it reaches."""
from tfm.cache import share_tinygrad_cache_across_threads

share_tinygrad_cache_across_threads()  # first: every tfm module is imported after this package, and may compile in any thread
from tfm.config import TransformerConfig, VisionConfig
from tfm.errors import BackendError, ConfigError, InputError, TfmError, WeightsError
from tfm.model import Transformer
from tfm.vit import VisionTransformer
from tfm.weights import load, save
from tfm.interop import from_pretrained
from tfm.generation import generate, generate_tokens
from tfm.translator import Translator
from tfm.classifier import Classifier
from tfm.tasks import get_task
from tfm.tokenizer import CharTokenizer
from tfm.train import Trainer, TrainOptions
from tfm import tune  # noqa: F401  (registers the tuned-kernel settings every model compiles with)

__all__ = ["TransformerConfig", "Transformer", "TfmError", "ConfigError", "InputError", "WeightsError", "BackendError",
           "save", "load", "from_pretrained", "generate", "generate_tokens", "Translator", "get_task", "CharTokenizer", "Trainer", "TrainOptions",
           "VisionConfig", "VisionTransformer", "Classifier"]
__version__ = "0.1.0"
