"""DA-Net's options (danet.py, docs/networks/danet.md)."""

import dataclasses

from ecam_jax.models.baselines.cenet_options import RESNET_DEPTHS
from ecam_jax.models.options import (
  Network,
  Options,
  Preset,
  attention_chunk,
  attention_impl,
  option,
)


@dataclasses.dataclass(frozen=True)
class DANetOptions(Options):
  """Defaults: junfu1115's `DANet` on a dilated ResNet-50 at output stride 8."""

  base_channels: int = option(
    64, "the ResNet's base width; the head's widths follow", interval='[1, inf)'
  )
  resnet_depth: int = option(
    50, 'depth of the ResNet encoder (50 and 101 use Bottlenecks)', choices=RESNET_DEPTHS
  )
  output_stride: int = option(
    8, "the ResNet's output stride (the stages past it dilate instead)", choices=(8, 16)
  )
  deep_supervision: bool = option(
    True, "the position and channel branches' auxiliary heads, as side outputs (loss.w_side)"
  )
  # PAM's 4096 x 4096 map per image at 512x512: query blocks need the least memory.
  attention_impl: str = attention_impl('chunked')
  attention_chunk: int = attention_chunk()
  dropout: float = option(
    0.1, 'channel dropout rate before each head in training', interval='[0, 1)'
  )

  TRAINING_ONLY = {'deep_supervision': False}

  def input_multiple(self) -> int:
    return self.output_stride


NETWORK = Network(
  DANetOptions,
  {
    'danet': Preset(
      'DA-Net: dilated ResNet-50 at output stride 8, position and channel attention (Fu et al.)',
      'I',
    )
  },
  'ecam_jax.models.baselines.danet:DANet',
)
