"""The error a bad dataset raises.

Config keys that cannot work raise `ecam_jax.configuration.ConfigError`; files that cannot
work raise `DataError`. Both name what is wrong (the file or the key) and what was expected,
and both are raised before any training starts.
"""


class DataError(ValueError):
  """A dataset file or folder that cannot be used; the message names it and the problem."""
