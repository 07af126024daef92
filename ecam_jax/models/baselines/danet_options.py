"""DA-Net's options (danet.py, docs/networks/danet.md)."""

import dataclasses

from ecam_jax.models.baselines.resnet_options import output_stride, resnet_depth
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
  resnet_depth: int = resnet_depth(50)
  output_stride: int = output_stride(8)
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
