"""CE-Net's options (cenet.py, docs/networks/cenet.md)."""

import dataclasses

from ecam_jax.models.baselines.resnet_options import resnet_depth
from ecam_jax.models.options import Network, Options, Preset, option


@dataclasses.dataclass(frozen=True)
class CENetOptions(Options):
  """Defaults: Guzaiwang's `CE_Net_` (ResNet-34)."""

  base_channels: int = option(
    64, "the ResNet's base width; every other width scales with it", interval='[1, inf)'
  )
  resnet_depth: int = resnet_depth(34)

  def input_multiple(self) -> int:
    return 32  # a ResNet at stride 32


NETWORK = Network(
  CENetOptions,
  {'cenet': Preset('CE-Net: ResNet-34 encoder, DAC + RMP context extractor', 'I')},
  'ecam_jax.models.baselines.cenet:CENet',
)
