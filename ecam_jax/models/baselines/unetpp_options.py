"""UNet++'s options (unetpp.py, docs/networks/unetpp.md)."""

import dataclasses

from ecam_jax.models.options import Network, Options, Preset, option


@dataclasses.dataclass(frozen=True)
class UNetPPOptions(Options):
  """Defaults: 4uiiurz1's `NestedUNet` with deep supervision."""

  base_channels: int = option(
    32, 'width of the nodes X(0, j); depth i has 2^i times it', interval='[1, inf)'
  )
  deep_supervision: bool = option(
    True,
    "heads on X(0,1), X(0,2), X(0,3) as side outputs (loss.w_side); X(0,4)'s is the prediction",
  )
  align_corners: bool = option(
    True, 'bilinear x2 upsampling with align_corners=True (4uiiurz1) or False (half-pixel)'
  )

  TRAINING_ONLY = {'deep_supervision': False}

  def input_multiple(self) -> int:
    return 16  # four 2x2 pools


NETWORK = Network(
  UNetPPOptions,
  {
    'unetpp': Preset(
      'UNet++: nested dense skips, heads on X(0,1..4), predicts from X(0,4) (Zhou et al.)', 'I'
    )
  },
  'ecam_jax.models.baselines.unetpp:UNetPlusPlus',
)
