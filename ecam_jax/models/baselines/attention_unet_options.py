"""Attention U-Net's options (attention_unet.py, docs/networks/attention_unet.md)."""

import dataclasses

from ecam_jax.models.options import Network, Options, Preset, option


@dataclasses.dataclass(frozen=True)
class AttentionUNetOptions(Options):
  """Defaults: LeeJunHyun's 2-D `AttU_Net`."""

  base_channels: int = option(
    64, 'width of the first level; the next ones are 2x, 4x, 8x, 16x', interval='[1, inf)'
  )

  def input_multiple(self) -> int:
    return 16  # four 2x2 pools


NETWORK = Network(
  AttentionUNetOptions,
  {
    'attention_unet': Preset(
      'Attention U-Net: additive attention gates on all four skips (Oktay et al.)', 'I'
    )
  },
  'ecam_jax.models.baselines.attention_unet:AttentionUNet',
)
