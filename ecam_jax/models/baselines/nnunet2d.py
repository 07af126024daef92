"""nnU-Net's 2-D U-Net (Isensee et al. 2021, nnU-Net v2): `PlainConvUNet` of
MIC-DKFZ/dynamic-network-architectures as nnU-Net's planner configures it for the input's
size (nnunet2d_plan.py; docs/networks/nnunet2d.md).

Encoder stage s: `encoder_convs` units conv 3x3 -> InstanceNorm (affine) -> LeakyReLU, the
first with the stage's stride (strided-conv downsampling, no pooling). Decoder stage, from
the bottleneck up: a transposed conv (kernel = stride = the stride of the stage below) to
the skip's width, concat [up, skip] (nnU-Net's order), `decoder_convs` units, and a 1x1
segmentation head. InstanceNorm normalizes each image alone, so the network has no
BatchNorm and no `batch_stats`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecam_jax.models.baselines.nnunet2d_options import NNUNet2DOptions
from ecam_jax.models.baselines.nnunet2d_plan import Plan, plan
from ecam_jax.models.layers import network_setup


def plan_of(options: NNUNet2DOptions, height: int, width: int) -> Plan:
  """nnU-Net's plan for a `height` x `width` input with these options."""
  return plan(
    height,
    width,
    options.in_channels,
    options.base_channels,
    options.max_channels,
    options.min_feature_map_size,
  )


class ConvNormAct(nn.Module):
  """nnU-Net's `ConvDropoutNormReLU` without dropout: conv (PyTorch's padding (k - 1) // 2
  on both sides, so a stride-2 conv's window i is centred on input pixel 2i) ->
  InstanceNorm (statistics per image and channel, in float32) -> LeakyReLU."""

  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  use_bias: bool = True
  epsilon: float = 1e-5
  slope: float = 0.01
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad = [((k - 1) // 2, (k - 1) // 2) for k in self.kernel_size]
    x = nn.Conv(
      self.features,
      self.kernel_size,
      strides=self.strides,
      padding=pad,
      use_bias=self.use_bias,
      dtype=self.dtype,
      name='conv',
    )(x)
    norm = nn.InstanceNorm(
      epsilon=self.epsilon, dtype=self.dtype, use_fast_variance=False, name='norm'
    )
    return nn.leaky_relu(norm(x), self.slope)


class TransposedConv(nn.Module):
  """Transposed conv with kernel = stride (sh, sw): each input pixel writes its own sh x sw
  block, y[sh i + p, sw j + q] = x[i, j] K[p, q] (+ bias); one matmul and a depth-to-space
  reshape, as layers.UpConv2x2 (which is its (2, 2) case with bias)."""

  features: int
  strides: tuple[int, int]
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    sh, sw = self.strides
    kernel = self.param(
      'kernel', nn.initializers.lecun_normal(), (sh, sw, c, self.features), jnp.float32
    )
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    y = jnp.einsum('bhwc,pqco->bhpwqo', x, kernel).reshape(b, sh * h, sw * w, self.features)
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
      y = y + bias.astype(y.dtype)
    return y


class ConvStack(nn.Module):
  """`convs` units to `features`, the first with `strides` (nnU-Net's StackedConvBlocks):
  an encoder stage, and the convs of a decoder stage."""

  features: int
  strides: tuple[int, int]
  kernel_size: tuple[int, int]
  convs: int
  options: NNUNet2DOptions

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    o = self.options
    for i in range(self.convs):
      x = ConvNormAct(
        self.features,
        self.kernel_size,
        self.strides if i == 0 else (1, 1),
        o.conv_bias,
        o.norm_epsilon,
        o.leaky_slope,
        jnp.dtype(o.dtype),
        name=f'conv{i}',
      )(x)
    return x


class DecoderStage(nn.Module):
  """Transposed conv of `below` by `strides` to `features`, concat [up, skip], `convs`
  units to `features` (nnU-Net's UNetDecoder stage, its head aside)."""

  features: int
  strides: tuple[int, int]
  kernel_size: tuple[int, int]
  convs: int
  options: NNUNet2DOptions

  @nn.compact
  def __call__(self, below: jax.Array, skip: jax.Array) -> jax.Array:
    o = self.options
    dtype = jnp.dtype(o.dtype)
    up = TransposedConv(self.features, self.strides, o.conv_bias, dtype, name='up')(below)
    x = jnp.concatenate([up, skip], axis=-1)  # [B, h, w, 2 * features]
    return ConvStack(self.features, (1, 1), self.kernel_size, self.convs, o, name='convs')(x)


class NNUNet2D(nn.Module):
  """Input [B, H, W, C] (any size with a side >= 8; C = options.in_channels) ->
  {'logits': [B, H, W, K], 'side_logits': the heads of the other decoder stages, from the
  highest resolution to the lowest, each [B, ceil(H / r_h), ceil(W / r_w), K] with (r_h,
  r_w) its stage's reduction, with model.deep_supervision, else ()}; K =
  options.num_classes.

  The plan (stages, strides, widths) is nnU-Net's for H x W; an input whose sides its plan
  does not divide is zero-padded at the bottom and right to the plan's patch and the
  outputs cropped back. Every head's parameters exist whether deep supervision is on or
  not (nnU-Net builds them all so that either setting loads the other's weights).

  options: nnunet2d_options.py. axis_name: unused (InstanceNorm needs no synchronization).
  """

  options: NNUNet2DOptions
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
    del train  # InstanceNorm and no dropout: training and inference compute alike
    o = self.options
    dtype, _ = network_setup(x, o, self.axis_name, "nnU-Net's 2-D U-Net")
    h, w = x.shape[1:3]
    p = plan_of(o, h, w)
    encoder, decoder = ConvStack, DecoderStage
    if o.remat:  # no static arguments: `train` changes nothing here
      encoder, decoder = nn.remat(ConvStack), nn.remat(DecoderStage)

    ph, pw = p.patch_size
    x = jnp.pad(x.astype(dtype), ((0, 0), (0, ph - h), (0, pw - w), (0, 0)))
    skips = []
    for s in range(p.num_stages):
      stage = encoder(
        p.features[s], p.strides[s], p.kernel_sizes[s], o.encoder_convs, o, name=f'encoder{s}'
      )
      x = stage(x)
      skips.append(x)  # [B, ph / r_h(s), pw / r_w(s), features[s]]

    heads = []  # float32 logits, from the lowest resolution up
    x = skips.pop()
    for s in range(p.num_stages - 2, -1, -1):
      x = decoder(
        p.features[s], p.strides[s + 1], p.kernel_sizes[s], o.decoder_convs, o, name=f'decoder{s}'
      )(x, skips.pop())
      if s == 0 or o.deep_supervision or self.is_initializing():
        head = nn.Conv(o.num_classes, (1, 1), dtype=dtype, name=f'head{s}')
        rh, rw = p.reduction(s)
        logits = head(x)[:, : -(-h // rh), : -(-w // rw)]
        heads.append(logits.astype(jnp.float32))
    logits = heads.pop()
    sides = tuple(reversed(heads)) if o.deep_supervision else ()
    return {'logits': logits, 'side_logits': sides}
