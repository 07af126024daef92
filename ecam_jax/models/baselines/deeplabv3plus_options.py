"""DeepLabV3+'s options (deeplabv3plus.py, docs/networks/deeplabv3plus.md)."""

import dataclasses

from ecam_jax.errors import ConfigError
from ecam_jax.models.baselines.resnet_options import output_stride, resnet_depth
from ecam_jax.models.options import Network, Options, Preset, option


@dataclasses.dataclass(frozen=True)
class DeepLabV3PlusOptions(Options):
  """Defaults: DeepLabV3+ on ResNet-50 at output stride 16, ASPP 6/12/18."""

  base_channels: int = option(
    64, "the ResNet's base width; ASPP and decoder are 4x it", interval='[1, inf)'
  )
  resnet_depth: int = resnet_depth(50)
  output_stride: int = output_stride(16)
  aspp_rates: tuple[int, ...] = option(
    (6, 12, 18), "the ASPP's dilation rates at output stride 16 (doubled at 8)"
  )
  dropout: float = option(0.1, 'dropout rate after the ASPP in training', interval='[0, 1)')

  def input_multiple(self) -> int:
    return self.output_stride

  def check(self) -> None:
    if not self.aspp_rates or min(self.aspp_rates) < 1:
      raise ConfigError(
        f'config.model.aspp_rates={self.aspp_rates}; expected dilation rates, integers >= 1'
      )


NETWORK = Network(
  DeepLabV3PlusOptions,
  {
    'deeplabv3plus': Preset(
      'DeepLabV3+: ResNet-50 at output stride 16, ASPP (6/12/18, image pooling), 48-ch decoder',
      'I',
    )
  },
  'ecam_jax.models.baselines.deeplabv3plus:DeepLabV3Plus',
)
