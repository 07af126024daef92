"""Attention U-Net (Oktay et al. 2018), the 2-D `AttU_Net` of LeeJunHyun/Image_Segmentation
(network.py): a depth-5 U-Net whose four skips pass through additive attention gates, and
whose upsampling is nearest x2 followed by a 3x3 conv unit (docs/networks/attention_unet.md).

Widths `base_channels * (1, 2, 4, 8, 16)` (64 ... 1024 in the reference). Every conv that
feeds a BatchNorm has no bias, the gates' 1x1 convs included (project convention).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecam_jax.models.baselines.attention_unet_options import AttentionUNetOptions
from ecam_jax.models.layers import ConvUnit, ModuleDef, network_setup
from ecam_jax.models.unet import WIDTHS, EncoderLevel


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, 2H, 2W, C], each pixel repeated 2x2 (PyTorch's nn.Upsample(2))."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


class AttentionGate(nn.Module):
  """Additive attention gate (`Attention_block`): the skip `x` scaled per pixel by

    psi = sigmoid(BN(conv1x1_{F_int->1}(ReLU(BN(W_g g) + BN(W_x x)))))

  with W_g, W_x 1x1 convs to `inter_features` (F_int). `g` (the upsampled decoder
  features) and `x` have the same spatial size; the output is shaped like `x`.
  """

  inter_features: int
  norm: ModuleDef
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, g: jax.Array, x: jax.Array, train: bool) -> jax.Array:
    def conv_bn(y: jax.Array, features: int, name: str) -> jax.Array:
      conv = nn.Conv(features, (1, 1), use_bias=False, dtype=self.dtype, name=name)
      return self.norm(use_running_average=not train, name=f'{name}_bn')(conv(y))

    a = nn.relu(conv_bn(g, self.inter_features, 'wg') + conv_bn(x, self.inter_features, 'wx'))
    # The sigmoid in float32: a gate near 0 or 1 is where bfloat16 rounds most.
    psi = nn.sigmoid(conv_bn(a, 1, 'psi').astype(jnp.float32))  # [B, H, W, 1]
    return x * psi.astype(x.dtype)


class AttentionDecoderLevel(nn.Module):
  """`up_conv` (nearest x2, 3x3 conv unit to `features`), gate the skip with it, concat
  [gated skip, up] (2 * features) and two 3x3 conv units to `features`."""

  features: int
  norm: ModuleDef
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array, train: bool) -> jax.Array:
    unit = dict(features=self.features, norm=self.norm, dtype=self.dtype)
    d = ConvUnit(**unit, name='up')(upsample_nearest_2x(x), train)  # [B, 2H, 2W, features]
    gate = AttentionGate(
      inter_features=self.features // 2, norm=self.norm, dtype=self.dtype, name='gate'
    )
    x = jnp.concatenate([gate(d, skip, train), d], axis=-1)  # [B, 2H, 2W, 2 * features]
    for i in range(2):
      x = ConvUnit(**unit, name=f'conv{i}')(x, train)
    return x


class AttentionUNet(nn.Module):
  """Input [B, H, W, 1] (H, W multiples of 16) -> {'logits': [B, H, W, K], 'side_logits':
  ()}; K = options.num_classes. No deep supervision (the 2-D reference has none).

  options: attention_unet_options.py. axis_name: the data axis BatchNorm synchronizes over
  in training.
  """

  options: AttentionUNetOptions
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
    s = self.options
    dtype, norm = network_setup(x, s, self.axis_name, 'Attention U-Net (four 2x2 pools)')
    encoder, decoder = EncoderLevel, AttentionDecoderLevel
    if s.remat:  # argument 0 is the module, so `train` is 2 (3 for the decoder)
      encoder = nn.remat(EncoderLevel, static_argnums=(2,))
      decoder = nn.remat(AttentionDecoderLevel, static_argnums=(3,))

    x = x.astype(dtype)
    skips = []
    for level, width in enumerate(WIDTHS):  # the reference's conv_block: two conv units
      x = encoder(
        features=s.base_channels * width,
        norm=norm,
        pool=level > 0,
        dtype=dtype,
        name=f'encoder{level + 1}',
      )(x, train)
      skips.append(x)
    x = skips.pop()  # [B, H/16, W/16, 16 * base]
    for level, width in enumerate(reversed(WIDTHS[:-1]), start=1):
      x = decoder(features=s.base_channels * width, norm=norm, dtype=dtype, name=f'decoder{level}')(
        x, skips.pop(), train
      )
    logits = nn.Conv(s.num_classes, (1, 1), dtype=dtype, name='head')(x)  # [B, H, W, K]
    return {'logits': logits.astype(jnp.float32), 'side_logits': ()}
