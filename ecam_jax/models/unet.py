"""EC-CaM-UNet: a depth-5 U-Net with EC encoder convs, the CoAG-MuSFu bottleneck and
side outputs, each a switch (docs/model.md); all switches off is the plain U-Net."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecam_jax.models.fusion import Bottleneck
from ecam_jax.models.layers import (
  AsymConv,
  ConvUnit,
  ModuleDef,
  UpConv2x2,
  max_pool_2x2,
  network_setup,
)
from ecam_jax.models.unet_options import UNetOptions

WIDTHS = (1, 2, 4, 8, 16)  # encoder level widths, in units of base_channels
SIDE_OUTPUTS = ('bottleneck', 'decoder1', 'decoder2', 'decoder3')


class EncoderLevel(nn.Module):
  """[2x2 max-pool] then two conv units (EC blocks when `use_ec`)."""

  features: int
  norm: ModuleDef
  pool: bool
  use_ec: bool = False
  folded: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.pool:
      x = max_pool_2x2(x)
    for i in range(2):
      unit = dict(features=self.features, norm=self.norm, dtype=self.dtype, name=f'conv{i}')
      conv = AsymConv(folded=self.folded, **unit) if self.use_ec else ConvUnit(**unit)
      x = conv(x, train)
    return x


class DecoderLevel(nn.Module):
  """2x2 up-conv halving the width, concat with the skip, two conv units."""

  features: int
  norm: ModuleDef
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array, train: bool) -> jax.Array:
    x = UpConv2x2(features=self.features, dtype=self.dtype, name='up')(x)
    x = jnp.concatenate([skip, x], axis=-1)
    for i in range(2):
      unit = ConvUnit(features=self.features, norm=self.norm, dtype=self.dtype, name=f'conv{i}')
      x = unit(x, train)
    return x


class SideHead(nn.Module):
  """DWS side output: 1x1 conv to the logits, bilinearly upsampled to the input size."""

  num_classes: int
  size: tuple[int, int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype)(x).astype(jnp.float32)
    shape = (x.shape[0], *self.size, self.num_classes)
    return jax.image.resize(logits, shape, method='bilinear')


class UNet(nn.Module):
  """Input [B, H, W, 1] (H, W multiples of 16) -> {'logits': [B, H, W, K],
  'side_logits': tuple of [B, H, W, K]}; K = options.num_classes (1: binary, sigmoid).

  options: unet_options.py says what each does. axis_name: the data-parallel axis
  BatchNorm synchronizes its statistics over in training (None outside shard_map). folded:
  EC blocks folded into single convs, for inference with variables from `fold_ec`.
  """

  options: UNetOptions
  axis_name: str | None = None
  folded: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
    s = self.options
    b, h, w, _ = x.shape
    dtype, norm = network_setup(x, s, self.axis_name, 'a depth-5 U-Net')
    encoder, decoder, bottleneck = EncoderLevel, DecoderLevel, Bottleneck
    if s.remat:  # argument 0 is the module, so `train` is 2 (3 for the decoder)
      encoder = nn.remat(EncoderLevel, static_argnums=(2,))
      decoder = nn.remat(DecoderLevel, static_argnums=(3,))
      bottleneck = nn.remat(Bottleneck, static_argnums=(2,))
    sides = s.side_outputs if s.use_dws else ()
    head = {
      name: SideHead(num_classes=s.num_classes, size=(h, w), dtype=dtype, name=f'side_{name}')
      for name in sides
    }

    x = x.astype(dtype)
    skips = []
    for level, width in enumerate(WIDTHS):
      x = encoder(
        features=s.base_channels * width,
        norm=norm,
        pool=level > 0,
        use_ec=s.use_ec,
        folded=self.folded,
        dtype=dtype,
        name=f'encoder{level + 1}',
      )(x, train)
      skips.append(x)
    x = bottleneck(options=s, norm=norm, dtype=dtype, name='bottleneck')(skips.pop(), train)
    side_logits = [head['bottleneck'](x)] if 'bottleneck' in head else []
    for level, width in enumerate(reversed(WIDTHS[:-1]), start=1):
      x = decoder(features=s.base_channels * width, norm=norm, dtype=dtype, name=f'decoder{level}')(
        x, skips.pop(), train
      )
      if f'decoder{level}' in head:
        side_logits.append(head[f'decoder{level}'](x))
    logits = nn.Conv(s.num_classes, (1, 1), dtype=dtype, name='head')(x)
    return {'logits': logits.astype(jnp.float32), 'side_logits': tuple(side_logits)}
