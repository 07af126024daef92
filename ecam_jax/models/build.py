"""Building a network from `config.model`, and its initial variables."""

import jax
import jax.numpy as jnp
import ml_collections

from ecam_jax.models import registry


def build_model(
  model_config: ml_collections.ConfigDict, *, axis_name: str | None = None, folded: bool = False
):
  """The Flax module `model_config` (config.model) describes, its options checked.

  axis_name: the data-parallel axis over which BatchNorm statistics are synchronized in
  training (None outside shard_map). folded: EC blocks as single 3x3 convs, for inference
  with variables from `layers.fold_ec` (only for a network with EC blocks).
  """
  options = registry.options_of(model_config)
  cls = registry.network_class(model_config['name'])
  if folded and not options.has_ec_blocks():
    raise ValueError(f'{model_config["name"]} with these options has no EC blocks to fold')
  return cls(options=options, axis_name=axis_name, **({'folded': True} if folded else {}))


def has_ec_blocks(model_config: ml_collections.ConfigDict) -> bool:
  """Whether the network `model_config` describes has EC blocks to fold for inference."""
  return registry.options_of(model_config).has_ec_blocks()


def init_variables(model, seed: int, image_size: int) -> dict:
  """The initial variables for [1, S, S, C] inputs (C: the network's options.in_channels):
  'params' and 'batch_stats' (empty for a network without BatchNorm).

  The key is RBG-based: XLA compiles its random draws several times faster than
  threefry's (13 s -> 4 s for a U-Net on CPU), and initial values only need to be
  reproducible, not bit-equal across backends. Other randomness (augmentation) uses
  threefry keys.
  """
  key = jax.random.key(seed, impl='rbg')
  shape = (1, image_size, image_size, model.options.in_channels)
  variables = model.init(key, jnp.zeros(shape, jnp.float32))
  if 'batch_stats' not in variables:  # no BatchNorm (nnunet2d's InstanceNorm): none to keep,
    variables = {**variables, 'batch_stats': {}}  # but the train state and checkpoints hold both
  return variables


def abstract_variables(model, image_size: int) -> dict:
  """Shapes and dtypes of the variables, without computing them."""
  return jax.eval_shape(lambda: init_variables(model, 0, image_size))
