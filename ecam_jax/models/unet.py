"""EC-CaM-UNet: a depth-5 U-Net with EC encoder convs, the CoAG-MuSFu bottleneck and
side outputs, each a switch (model.md); all switches off is the plain U-Net."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecam_jax.models.fusion import Bottleneck
from ecam_jax.models.layers import AsymConv, ConvUnit, ModuleDef, UpConv2x2, max_pool_2x2

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
      if self.use_ec:
        x = AsymConv(self.features, self.norm, self.folded, self.dtype, name=f'conv{i}')(x, train)
      else:
        x = ConvUnit(self.features, self.norm, dtype=self.dtype, name=f'conv{i}')(x, train)
    return x


class DecoderLevel(nn.Module):
  """2x2 up-conv halving the width, concat with the skip, two conv units."""

  features: int
  norm: ModuleDef
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array, train: bool) -> jax.Array:
    x = UpConv2x2(self.features, self.dtype, name='up')(x)
    x = jnp.concatenate([skip, x], axis=-1)
    for i in range(2):
      x = ConvUnit(self.features, self.norm, dtype=self.dtype, name=f'conv{i}')(x, train)
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
  'side_logits': tuple of [B, H, W, K]}; K = num_classes (1: binary, sigmoid)."""

  norm: ModuleDef
  base_channels: int = 64
  num_classes: int = 1
  use_cc: bool = True
  use_sc: bool = True
  use_mus: bool = True
  use_ec: bool = True
  use_dws: bool = True
  attention: str = 'coa'
  fusion: str = 'conv'
  attention_scale: float | str = 1.0
  attention_impl: str = 'fused'  # SC: 'fused' | 'chunked' | 'naive' (attention.py)
  cc_hidden: int = 1
  aspp_rates: tuple[int, ...] = (6, 12, 18)
  aspp_1x1_branch: bool = False
  aspp_image_pool: bool = False
  side_outputs: tuple[str, ...] = ('bottleneck',)
  reduction: int = 16
  cbam_kernel: int = 7
  folded: bool = False  # EC blocks folded into single convs (inference; see fold_ec)
  remat: bool = False  # recompute each level's activations in the backward pass
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
    b, h, w, _ = x.shape
    if h % 16 or w % 16:
      raise ValueError(f'input of {h}x{w}: a depth-5 U-Net needs multiples of 16')
    encoder, decoder, bottleneck = EncoderLevel, DecoderLevel, Bottleneck
    if self.remat:  # argument 0 is the module, so `train` is 2 (3 for the decoder)
      encoder = nn.remat(EncoderLevel, static_argnums=(2,))
      decoder = nn.remat(DecoderLevel, static_argnums=(3,))
      bottleneck = nn.remat(Bottleneck, static_argnums=(2,))
    sides = self.side_outputs if self.use_dws else ()
    head = {
      name: SideHead(self.num_classes, (h, w), self.dtype, name=f'side_{name}') for name in sides
    }

    x = x.astype(self.dtype)
    skips = []
    for level, width in enumerate(WIDTHS):
      x = encoder(
        self.base_channels * width,
        self.norm,
        pool=level > 0,
        use_ec=self.use_ec,
        folded=self.folded,
        dtype=self.dtype,
        name=f'encoder{level + 1}',
      )(x, train)
      skips.append(x)
    x = bottleneck(
      self.norm,
      attention=self.attention,
      use_cc=self.use_cc,
      use_sc=self.use_sc,
      use_mus=self.use_mus,
      fusion=self.fusion,
      attention_scale=self.attention_scale,
      attention_impl=self.attention_impl,
      cc_hidden=self.cc_hidden,
      aspp_rates=self.aspp_rates,
      aspp_1x1_branch=self.aspp_1x1_branch,
      aspp_image_pool=self.aspp_image_pool,
      reduction=self.reduction,
      cbam_kernel=self.cbam_kernel,
      dtype=self.dtype,
      name='bottleneck',
    )(skips.pop(), train)
    side_logits = [head['bottleneck'](x)] if 'bottleneck' in head else []
    for level, width in enumerate(reversed(WIDTHS[:-1]), start=1):
      x = decoder(self.base_channels * width, self.norm, self.dtype, name=f'decoder{level}')(
        x, skips.pop(), train
      )
      if f'decoder{level}' in head:
        side_logits.append(head[f'decoder{level}'](x))
    logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name='head')(x)
    return {'logits': logits.astype(jnp.float32), 'side_logits': tuple(side_logits)}
