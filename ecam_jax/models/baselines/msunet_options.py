"""MSU-Net's options (msunet.py, docs/networks/msunet.md)."""

import dataclasses

from ecam_jax.errors import ConfigError
from ecam_jax.models.options import Network, Options, Preset, option


@dataclasses.dataclass(frozen=True)
class MSUNetOptions(Options):
  """Defaults: CN-zdy's `MSU_Net`."""

  base_channels: int = option(
    32, 'width of the first level; the next ones are 2x, 4x, 8x, 16x', interval='[1, inf)'
  )
  small_kernel: int = option(
    3, 'kernel size of the small branch of every multi-kernel block (odd)', interval='[1, inf)'
  )
  large_kernel: int = option(
    7, 'kernel size of the large branch of every multi-kernel block (odd)', interval='[1, inf)'
  )

  def input_multiple(self) -> int:
    return 16  # four 2x2 pools

  def check(self) -> None:
    for key in ('small_kernel', 'large_kernel'):
      if getattr(self, key) % 2 == 0:  # 'SAME' padding of an even kernel is lopsided
        raise ConfigError(f'config.model.{key}={getattr(self, key)}; expected an odd kernel size')


NETWORK = Network(
  MSUNetOptions,
  {'msunet': Preset('MSU-Net: U-Net of multi-kernel (3x3 and 7x7) blocks (Su et al.)', 'I')},
  'ecam_jax.models.baselines.msunet:MSUNet',
)
