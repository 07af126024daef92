"""Models, chosen by name from one explicit dict."""

import jax
import jax.numpy as jnp
import ml_collections

from ecam_jax.models.baselines.attention_unet import AttentionUNet
from ecam_jax.models.baselines.cenet import CENet
from ecam_jax.models.baselines.danet import DANet
from ecam_jax.models.baselines.deeplabv3plus import DeepLabV3Plus
from ecam_jax.models.baselines.hrnet import HRNet
from ecam_jax.models.baselines.msunet import MSUNet
from ecam_jax.models.baselines.segformer import SegFormer
from ecam_jax.models.baselines.unetpp import UNetPlusPlus
from ecam_jax.models.layers import fold_ec
from ecam_jax.models.settings import ModelSettings
from ecam_jax.models.unet import UNet

# config.model.name -> the module class, built as cls(settings=, axis_name=, folded=).
# Every variant of the paper's tables is the one U-Net with switches (see variants.py).
MODELS = {
  'ecam_unet': UNet,
  'cenet': CENet,
  'attention_unet': AttentionUNet,
  'msunet': MSUNet,
  'unetpp': UNetPlusPlus,
  'deeplabv3plus': DeepLabV3Plus,
  'hrnet': HRNet,
  'danet': DANet,
  'segformer': SegFormer,
}


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
  return MODELS[config.name](settings=ModelSettings(config), axis_name=axis_name, folded=folded)


def has_ec_blocks(config: ml_collections.ConfigDict) -> bool:
  """Whether the network config.model describes has EC blocks to fold for inference: only
  the U-Net does (a compared network chosen by model.name alone keeps the U-Net's switches
  in its config, unused)."""
  return config.name == 'ecam_unet' and bool(config.use_ec)


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


__all__ = [
  'MODELS',
  'ModelSettings',
  'abstract_variables',
  'build_model',
  'fold_ec',
  'has_ec_blocks',
  'init_variables',
]
