"""DeepLabV3+ (Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic
Image Segmentation", ECCV 2018): a dilated ResNet, atrous spatial pyramid pooling (ASPP) on
its deepest feature, and a decoder that refines the ASPP output with the stride-4 feature.
The head follows the authors' TensorFlow code (github.com/tensorflow/models,
research/deeplab/model.py, `refine_by_decoder`: two 3x3 convs after the concat); the
ASPP's branch order follows VainF/DeepLabV3Plus-Pytorch (network/_deeplab.py).

As built here (docs/networks/deeplabv3plus.md lists every departure): ResNet-50 from random
weights with a 1-channel stem, its depth `model.resnet_depth` and output stride
`model.output_stride` (16, or 8 with the ASPP rates doubled); every head width scales with
`model.base_channels` (64 is the reference: ASPP and decoder 256, low-level projection
48); the decoder convs are plain 3x3 (the TF default is separable); bilinear resizes use
align_corners=True (TF's); no conv has a bias before a BatchNorm; dropout draws per global
row (models/dropout.py).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecam_jax.models.baselines.deeplabv3plus_options import DeepLabV3PlusOptions
from ecam_jax.models.baselines.resnet import ResNet
from ecam_jax.models.dropout import Dropout
from ecam_jax.models.layers import ConvUnit, ModuleDef, network_setup
from ecam_jax.models.resize import resize_bilinear

# Strides with dilation instead, for the ResNet's stages 2-4, per output stride.
DILATED_STAGES = {16: (False, False, True), 8: (False, True, True)}


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling: [B, h, w, C] -> [B, h, w, features].

  Five branches, each a CBR (conv without bias, BatchNorm, ReLU) to `features`: a 1x1;
  a 3x3 of dilation r for each r in `rates`; image pooling (the global mean [B, 1, 1, C]
  -> 1x1 CBR -> broadcast back to h x w; its BatchNorm sees one value per row and channel,
  so its statistics are over the batch alone). Concatenated in that order, 1x1 CBR to
  `features`, dropout.
  """

  features: int
  rates: tuple[int, ...]
  dropout: float
  norm: ModuleDef
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    b, h, w, _ = x.shape
    cbr = lambda kernel, dilation, name: ConvUnit(  # noqa: E731
      self.features, self.norm, (kernel, kernel), dilation, self.dtype, name=name
    )
    branches = [cbr(1, 1, 'conv1x1')(x, train)]
    branches += [cbr(3, r, f'atrous{i + 1}')(x, train) for i, r in enumerate(self.rates)]
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True, dtype=jnp.float32).astype(self.dtype)
    pooled = cbr(1, 1, 'image_pool')(pooled, train)  # [B, 1, 1, features]
    branches.append(jnp.broadcast_to(pooled, (b, h, w, self.features)))
    y = cbr(1, 1, 'project')(jnp.concatenate(branches, axis=-1), train)
    return Dropout(self.dropout, self.axis_name, name='dropout')(y, train)


class Decoder(nn.Module):
  """TF's `refine_by_decoder`: low [B, H/4, W/4, C1] -> 1x1 CBR to `low_features`; the ASPP
  output [B, h, w, A] resized bilinearly (align_corners=True) to H/4 x W/4; concat
  [resized ASPP, low] -> 3x3 CBR to `features` twice -> 1x1 conv with bias to `num_classes`:
  logits [B, H/4, W/4, K] in the compute dtype."""

  features: int
  low_features: int
  num_classes: int
  norm: ModuleDef
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, aspp: jax.Array, low: jax.Array, train: bool) -> jax.Array:
    cbr = lambda features, kernel, name: ConvUnit(  # noqa: E731
      features, self.norm, (kernel, kernel), dtype=self.dtype, name=name
    )
    low = cbr(self.low_features, 1, 'low_project')(low, train)  # [B, H/4, W/4, low_features]
    up = resize_bilinear(aspp, low.shape[1:3], align_corners=True)  # [B, H/4, W/4, A]
    y = jnp.concatenate([up, low], axis=-1)
    y = cbr(self.features, 3, 'refine1')(y, train)
    y = cbr(self.features, 3, 'refine2')(y, train)
    return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name='classifier')(y)


class DeepLabV3Plus(nn.Module):
  """Input [B, H, W, 1] (H, W multiples of the output stride) ->
  {'logits': [B, H, W, K], 'side_logits': ()}.

  ResNet-`resnet_depth` (base `base_channels`, output stride `output_stride`) -> c1 at
  stride 4 and c4 at the output stride; ASPP(c4) at width 4 x base with rates
  `aspp_rates` x (16 / output_stride); Decoder(ASPP, c1) with a low-level projection of
  3 x base / 4; logits resized bilinearly (align_corners=True) from stride 4 to H x W.
  """

  options: DeepLabV3PlusOptions
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
    s = self.options
    stride = s.output_stride
    dtype, norm = network_setup(
      x, s, self.axis_name, f'DeepLabV3+ (a ResNet at output stride {stride})'
    )
    aspp, decoder = ASPP, Decoder
    if s.remat:  # argument 0 is the module: `train` is ASPP's 2 and Decoder's 3
      aspp = nn.remat(ASPP, static_argnums=(2,))
      decoder = nn.remat(Decoder, static_argnums=(3,))

    c1, _, _, c4 = ResNet(
      norm=norm,
      depth=s.resnet_depth,
      base_width=s.base_channels,
      replace_stride_with_dilation=DILATED_STAGES[stride],
      dtype=dtype,
      remat=s.remat,
      name='backbone',
    )(x.astype(dtype), train)  # c1 [B, H/4, W/4, C1], c4 [B, H/os, W/os, C4]

    width = 4 * s.base_channels  # 256 in the reference
    rates = tuple(r * (16 // stride) for r in s.aspp_rates)
    y = aspp(width, rates, s.dropout, norm, self.axis_name, dtype, name='aspp')(c4, train)
    low = max(1, 3 * s.base_channels // 4)  # 48 in the reference
    logits = decoder(width, low, s.num_classes, norm, dtype, name='decoder')(y, c1, train)
    logits = resize_bilinear(logits.astype(jnp.float32), x.shape[1:3], align_corners=True)
    return {'logits': logits, 'side_logits': ()}
