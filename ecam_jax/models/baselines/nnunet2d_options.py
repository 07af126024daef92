"""nnU-Net's 2-D U-Net's options (nnunet2d.py, docs/networks/nnunet2d.md)."""

import dataclasses

from ecam_jax.models.options import NUMERICS, Network, Options, Preset, option


@dataclasses.dataclass(frozen=True)
class NNUNet2DOptions(Options):
  """Defaults: what nnU-Net v2's default planner gives a 2-D configuration. The plan
  itself (stages, strides) follows from the input's size (nnunet2d_plan.py)."""

  base_channels: int = option(
    32,
    "width of stage 0; stage s has min(base * 2^s, max_channels) (nnU-Net's 32)",
    interval='[1, inf)',
  )
  max_channels: int = option(
    512, "the widest a stage gets (nnU-Net's UNet_max_features_2d)", interval='[1, inf)'
  )
  min_feature_map_size: int = option(
    4,
    'the plan halves an axis while it is at least twice this long (nnU-Net: 4)',
    interval='[1, inf)',
  )
  encoder_convs: int = option(
    2, 'conv-InstanceNorm-LeakyReLU units per encoder stage', interval='[1, inf)'
  )
  decoder_convs: int = option(
    2, 'conv-InstanceNorm-LeakyReLU units per decoder stage', interval='[1, inf)'
  )
  deep_supervision: bool = option(
    True,
    "the other decoder stages' heads as side outputs at their own resolution (loss.w_side)",
  )
  conv_bias: bool = option(True, "biases on the convs and transposed convs (nnU-Net's plans: True)")
  leaky_slope: float = option(
    0.01, "LeakyReLU's negative slope (PyTorch's default)", interval='[0, inf)', resume=NUMERICS
  )
  norm_epsilon: float = option(
    1e-5, 'InstanceNorm: added to the variance', interval='(0, inf)', resume=NUMERICS
  )

  TRAINING_ONLY = {'deep_supervision': False}

  def input_multiple(self) -> int:
    # Any size: the plan rounds the input up to its patch (multiples of 2^halvings per axis)
    # and the network pads to it, as nnU-Net pads an image smaller than its patch.
    return 1


NETWORK = Network(
  NNUNet2DOptions,
  {
    'nnunet2d': Preset(
      "nnU-Net's 2-D U-Net (PlainConvUNet, Isensee et al. 2021/2024)",
      'not in the paper: a row Table I adds beyond it',
    )
  },
  'ecam_jax.models.baselines.nnunet2d:NNUNet2D',
)
