"""The errors a user can cause, each naming what is wrong and what was expected.

`ecam_jax.main` prints any of them as one line, without a traceback, and exits with status
1. This module imports nothing from the package, so that every module may raise them.
"""


class ConfigError(ValueError):
  """A config value (or command-line override) that cannot work; the message names the key."""


class DataError(ValueError):
  """A dataset file or folder that cannot be used; the message names it and the problem."""


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; the message names the folder."""


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient was not finite and config.train.nonfinite='stop'."""


class ExportMismatch(RuntimeError):
  """An exported artifact's logits differ from the JAX model's beyond the tolerance."""


# What `main` reports as one line (the message names the key, file or folder).
USER_ERRORS = (ConfigError, DataError, CheckpointError, NonFiniteLossError, ExportMismatch)
