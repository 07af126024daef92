"""HRNet's options (hrnet.py, docs/networks/hrnet.md)."""

import dataclasses

from ecam_jax.models.options import Network, Options, Preset, option

# size -> (Bottlenecks of stage 1, modules of stages 2, 3, 4, BasicBlocks per branch in a
# module): HRNetV2's (the w48/w18 configs) and HRNet-W18-Small-v2's.
SIZES: dict[str, tuple[int, tuple[int, int, int], int]] = {
  'full': (4, (1, 4, 3), 4),
  'small_v2': (2, (1, 3, 2), 2),
}


@dataclasses.dataclass(frozen=True)
class HRNetOptions(Options):
  """Defaults: HRNetV2-W48."""

  base_channels: int = option(
    48,
    'the width of the stride-4 branch (48: W48, 18: W18); the others are 2x, 4x, 8x',
    interval='[1, inf)',
  )
  size: str = option(
    'full',
    "'full' (HRNetV2's depths) or 'small_v2' (HRNet-W18-Small-v2's: fewer modules and blocks)",
    choices=tuple(SIZES),
  )

  def input_multiple(self) -> int:
    return 32  # four branches down to stride 32


NETWORK = Network(
  HRNetOptions,
  {
    'hrnet': Preset(
      'HRNetV2-W48: four parallel resolutions fused repeatedly, concatenating head (Wang et al.)',
      'I',
    )
  },
  'ecam_jax.models.baselines.hrnet:HRNet',
)
