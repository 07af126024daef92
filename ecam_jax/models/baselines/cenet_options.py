"""CE-Net's options (cenet.py, docs/networks/cenet.md)."""

import dataclasses

from ecam_jax.models.options import Network, Options, Preset, option

RESNET_DEPTHS = (18, 34, 50, 101)  # resnet.py DEPTHS


@dataclasses.dataclass(frozen=True)
class CENetOptions(Options):
  """Defaults: Guzaiwang's `CE_Net_` (ResNet-34)."""

  base_channels: int = option(
    64, "the ResNet's base width; every other width scales with it", interval='[1, inf)'
  )
  resnet_depth: int = option(
    34,
    'depth of the ResNet encoder (50 and 101 use Bottlenecks, 4x wider features)',
    choices=RESNET_DEPTHS,
  )

  def input_multiple(self) -> int:
    return 32  # a ResNet at stride 32


NETWORK = Network(
  CENetOptions,
  {'cenet': Preset('CE-Net: ResNet-34 encoder, DAC + RMP context extractor', 'I')},
  'ecam_jax.models.baselines.cenet:CENet',
)
