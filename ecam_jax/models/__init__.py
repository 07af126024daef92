"""Models, chosen by name from one explicit dict."""

import jax
import jax.numpy as jnp
import ml_collections

from ecam_jax.models.layers import fold_ec, make_norm
from ecam_jax.models.unet import UNet

# config.model.name -> the module class. Every variant of model.md's table is the one
# U-Net with switches (see variants.py).
MODELS = {'ecam_unet': UNet}

# config.model keys that are module fields under the same name.
_FIELDS = (
  'base_channels',
  'num_classes',
  'use_cc',
  'use_sc',
  'use_mus',
  'use_ec',
  'use_dws',
  'attention',
  'fusion',
  'attention_scale',
  'attention_impl',
  'cc_hidden',
  'aspp_rates',
  'aspp_1x1_branch',
  'aspp_image_pool',
  'side_outputs',
  'reduction',
  'cbam_kernel',
  'remat',
)


def build_model(
  config: ml_collections.ConfigDict, *, axis_name: str | None = None, folded: bool = False
) -> UNet:
  """The network `config` (config.model) describes.

  axis_name: the data-parallel axis over which BatchNorm statistics are synchronized
  in training (None outside shard_map). folded: EC blocks as single 3x3 convs, for
  inference with variables from `fold_ec`.
  """
  if config.name not in MODELS:
    raise ValueError(f'config.model.name={config.name!r}; expected one of {sorted(MODELS)}')
  dtype = jnp.dtype(config.dtype)
  norm = make_norm(axis_name, config.bn_momentum, config.bn_epsilon, dtype)
  fields = {k: config[k] for k in _FIELDS}
  fields['aspp_rates'] = tuple(fields['aspp_rates'])
  fields['side_outputs'] = tuple(fields['side_outputs'])
  return MODELS[config.name](
    norm=norm,
    folded=folded,
    dtype=dtype,
    **fields,
  )


def init_variables(model: UNet, seed: int, image_size: int) -> dict:
  """The initial variables for [1, S, S, 1] inputs.

  The key is RBG-based: XLA compiles its random draws several times faster than
  threefry's (13 s -> 4 s for a U-Net on CPU), and initial values only need to be
  reproducible, not bit-equal across backends. Other randomness (augmentation) uses
  threefry keys.
  """
  key = jax.random.key(seed, impl='rbg')
  return model.init(key, jnp.zeros((1, image_size, image_size, 1), jnp.float32))


def abstract_variables(model: UNet, image_size: int) -> dict:
  """Shapes and dtypes of the variables, without computing them."""
  return jax.eval_shape(lambda: init_variables(model, 0, image_size))


__all__ = ['MODELS', 'abstract_variables', 'build_model', 'fold_ec', 'init_variables']
