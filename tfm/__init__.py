"""tfm: the Transformer of "Attention Is All You Need", written once on tinygrad and run on any backend it reaches."""
from tfm.cache import share_tinygrad_cache_across_threads

share_tinygrad_cache_across_threads()  # first: every tfm module is imported after this package, and may compile in any thread
from tfm.config import TransformerConfig
from tfm.errors import BackendError, ConfigError, InputError, TfmError, WeightsError
from tfm.model import Transformer
from tfm.weights import load, save
from tfm.interop.marian import from_pretrained
from tfm.generation import generate
from tfm.translator import Translator
from tfm.tasks import get_task
from tfm.tokenizer import CharTokenizer
from tfm.train import Trainer, TrainOptions
from tfm import tune  # noqa: F401  (registers the tuned-kernel settings every model compiles with)

__all__ = ["TransformerConfig", "Transformer", "TfmError", "ConfigError", "InputError", "WeightsError", "BackendError",
           "save", "load", "from_pretrained", "generate", "Translator", "get_task", "CharTokenizer", "Trainer", "TrainOptions"]
__version__ = "0.1.0"
