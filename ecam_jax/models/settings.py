"""The model's settings: one frozen copy of `config.model`, handed to the modules.

configs/default.py is the one list of the model's settings, with their defaults and
what each does. `build_model` freezes config.model into a `ModelSettings`, which the
U-Net and its bottleneck read by name (`settings.use_cc`); a new setting is its line in
configs/default.py and the code that reads it, nothing else. Frozen, so that it is
hashable: a Flax module field, and part of what jit caches compiled programs by.
"""

import ml_collections


class ModelSettings(ml_collections.FrozenConfigDict):
  """config.model, immutable; a setting that is not there is an error naming its key."""

  def __getattr__(self, key: str):
    try:
      return super().__getattr__(key)
    except AttributeError:
      if key.startswith('_'):
        raise
      raise AttributeError(
        f'config.model.{key} is not set: the config does not derive from configs/default.py, '
        'which lists every model setting with its default'
      ) from None
