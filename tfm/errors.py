"""The errors tfm raises on bad input: each a ValueError whose message names the problem and the fix."""


class TfmError(ValueError):
  """Base of every error tfm raises for bad input, files or settings."""


class ConfigError(TfmError):
  """A TransformerConfig field has a value that does not fit."""


class InputError(TfmError):
  """Token ids (or other call arguments) are not what the model accepts."""


class WeightsError(TfmError):
  """A weight file or checkpoint cannot be loaded as it is."""


class BackendError(TfmError, RuntimeError):
  """The backend failed to compile or run a kernel; the message names the backend and what to try instead."""
