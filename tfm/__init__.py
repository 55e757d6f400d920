"""tfm: the Transformer of "Attention Is All You Need", written once on tinygrad and run on any backend it reaches."""
from tfm.runtime.patches import share_tinygrad_cache_across_threads

share_tinygrad_cache_across_threads()  # first: every tfm module is imported after this package, and may compile in any thread
from tfm.config import TransformerConfig, VisionConfig
from tfm.errors import BackendError, ConfigError, InputError, TfmError, WeightsError
from tfm.nn.transformer import Transformer
from tfm.nn.vit import VisionTransformer
from tfm.io.weights import load, save
from tfm.interop import from_pretrained
from tfm.generation import generate, generate_tokens
from tfm.apps.translator import Translator
from tfm.apps.classifier import Classifier
from tfm.apps.transcriber import Transcriber
from tfm.training.tasks import get_task
from tfm.io.tokenizer import CharTokenizer
from tfm.training.trainer import Trainer, TrainOptions

__all__ = ["TransformerConfig", "Transformer", "TfmError", "ConfigError", "InputError", "WeightsError", "BackendError",
           "save", "load", "from_pretrained", "generate", "generate_tokens", "Translator", "get_task", "CharTokenizer", "Trainer", "TrainOptions",
           "VisionConfig", "VisionTransformer", "Classifier", "Transcriber"]
__version__ = "0.1.0"
