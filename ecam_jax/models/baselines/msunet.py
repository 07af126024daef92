"""MSU-Net (Su et al. 2021, 'MSU-Net: Multi-scale U-Net for 2D medical image segmentation';
reference code CN-zdy/MSU_Net, models.py: MSU_Net): a depth-5 U-Net whose every conv pair
is a multi-kernel block, two parallel conv pairs with small (3x3) and large (7x7) kernels
whose outputs a 1x1 conv fuses. docs/networks/msunet.md describes it and its departures
from the reference code."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecam_jax.models.baselines.msunet_options import MSUNetOptions
from ecam_jax.models.layers import ConvUnit, ModuleDef, UpConv2x2, max_pool_2x2, network_setup

WIDTHS = (1, 2, 4, 8, 16)  # level widths in units of base_channels (reference: 32..512)


class MultiKernelBlock(nn.Module):
  """The reference's conv_3_1: for each kernel size k, [k x k conv -> BN -> ReLU] x 2;
  the branches concatenated ([.., len(kernels) * features]) and fused by a 1x1 conv with
  bias and no BN or ReLU after it (as in the reference: the next block's BN follows)."""

  features: int
  norm: ModuleDef
  kernels: tuple[int, ...] = (3, 7)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    branches = []
    for b, k in enumerate(self.kernels):
      y = x
      for i in range(2):
        y = ConvUnit(
          features=self.features,
          norm=self.norm,
          kernel_size=(k, k),
          dtype=self.dtype,
          name=f'branch{b}_conv{i}',
        )(y, train)
      branches.append(y)  # [B, H, W, features]
    y = jnp.concatenate(branches, axis=-1)  # [B, H, W, len(kernels) * features]
    return nn.Conv(self.features, (1, 1), dtype=self.dtype, name='fuse')(y)


class EncoderLevel(nn.Module):
  """[2x2 max-pool] then a multi-kernel block."""

  features: int
  norm: ModuleDef
  pool: bool
  kernels: tuple[int, ...]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.pool:
      x = max_pool_2x2(x)  # [B, H/2, W/2, C]
    block = MultiKernelBlock(
      features=self.features, norm=self.norm, kernels=self.kernels, dtype=self.dtype, name='block'
    )
    return block(x, train)


class DecoderLevel(nn.Module):
  """2x2 transposed conv (stride 2, bias) halving the width, concat [skip, up], a
  multi-kernel block back to `features`."""

  features: int
  norm: ModuleDef
  kernels: tuple[int, ...]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array, train: bool) -> jax.Array:
    x = UpConv2x2(features=self.features, dtype=self.dtype, name='up')(x)  # [B, 2H, 2W, F]
    x = jnp.concatenate([skip, x], axis=-1)  # [B, 2H, 2W, 2F]
    block = MultiKernelBlock(
      features=self.features, norm=self.norm, kernels=self.kernels, dtype=self.dtype, name='block'
    )
    return block(x, train)


class MSUNet(nn.Module):
  """Input [B, H, W, 1] (H, W multiples of 16) -> {'logits': [B, H, W, K], 'side_logits': ()};
  K = options.num_classes.

  options: msunet_options.py (base_channels, small_kernel, large_kernel, and every
  network's). axis_name: the data axis BatchNorm synchronizes over in training.
  """

  options: MSUNetOptions
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
    s = self.options
    dtype, norm = network_setup(x, s, self.axis_name, 'MSU-Net (four 2x2 pools)')
    kernels = (s.small_kernel, s.large_kernel)
    encoder, decoder = EncoderLevel, DecoderLevel
    if s.remat:  # argument 0 is the module, so `train` is 2 (3 for the decoder)
      encoder = nn.remat(EncoderLevel, static_argnums=(2,))
      decoder = nn.remat(DecoderLevel, static_argnums=(3,))

    x = x.astype(dtype)
    skips = []
    for level, width in enumerate(WIDTHS):
      x = encoder(
        features=s.base_channels * width,
        norm=norm,
        pool=level > 0,
        kernels=kernels,
        dtype=dtype,
        name=f'encoder{level + 1}',
      )(x, train)  # [B, H / 2^level, W / 2^level, base * width]
      skips.append(x)
    skips.pop()  # the deepest level is the decoder's input, not a skip
    for level, width in enumerate(reversed(WIDTHS[:-1]), start=1):
      x = decoder(
        features=s.base_channels * width,
        norm=norm,
        kernels=kernels,
        dtype=dtype,
        name=f'decoder{level}',
      )(x, skips.pop(), train)
    logits = nn.Conv(s.num_classes, (1, 1), dtype=dtype, name='head')(x)  # [B, H, W, K]
    return {'logits': logits.astype(jnp.float32), 'side_logits': ()}
