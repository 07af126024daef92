"""SegFormer's options (segformer.py, docs/networks/segformer.md)."""

import dataclasses

from ecam_jax.models.options import Network, Options, Preset, option

# size -> (stage widths, blocks per stage, decoder width E) (NVlabs' local_configs/segformer)
SIZES = {
  'b0': ((32, 64, 160, 256), (2, 2, 2, 2), 256),
  'b2': ((64, 128, 320, 512), (3, 4, 6, 3), 768),
}


@dataclasses.dataclass(frozen=True)
class SegFormerOptions(Options):
  """Defaults: SegFormer MiT-B2."""

  size: str = option('b2', 'the MiT encoder and its decoder', choices=tuple(SIZES))
  drop_path: float = option(
    0.1, 'stochastic depth, rising linearly over the blocks from 0 to this', interval='[0, 1)'
  )
  dropout: float = option(
    0.1, 'channel dropout rate before the classifier in training', interval='[0, 1)'
  )

  def input_multiple(self) -> int:
    return 32  # four stages down to stride 32


NETWORK = Network(
  SegFormerOptions,
  {
    'segformer': Preset(
      'SegFormer MiT-B2: efficient self-attention, Mix-FFN, all-MLP decoder (Xie et al.)', 'I'
    )
  },
  'ecam_jax.models.baselines.segformer:SegFormer',
)
