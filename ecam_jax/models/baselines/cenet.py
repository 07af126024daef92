"""CE-Net (Gu et al., "CE-Net: Context Encoder Network for 2D Medical Image Segmentation",
IEEE TMI 2019), after the authors' `CE_Net_` (github.com/Guzaiwang/CE-Net,
networks/cenet.py): a ResNet-34 encoder, the context extractor (DAC, then RMP) on its
deepest feature, and four decoder blocks whose outputs add to the encoder's skips.

As built here (docs/networks/cenet.md lists every departure): the encoder starts from
random weights with a 1-channel stem (the reference loads ImageNet weights into a
3-channel one), its depth is `model.resnet_depth`, every width scales with
`model.base_channels` (64 is the reference), the convs before a BatchNorm have no bias,
RMP's pools are clipped to the deepest map's sides (so any multiple of 32 works), and the
head returns logits (the reference applies a sigmoid).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecam_jax.models.baselines.cenet_options import CENetOptions
from ecam_jax.models.baselines.resnet import ResNet
from ecam_jax.models.layers import ModuleDef, network_setup
from ecam_jax.models.resize import resize_bilinear

DAC_RATES = (1, 3, 5)  # dilations of DAC's three 3x3 convs (the paper's Fig. 3)
RMP_POOLS = (2, 3, 5, 6)  # RMP's max-pool windows (= strides), the paper's Fig. 4


class DAC(nn.Module):
  """Dense atrous convolution: four cascaded branches of shared convs, summed with x.

  With D1, D3, D5 the 3x3 convs of dilation 1, 3, 5 and P the 1x1 conv (all C -> C,
  with bias, no BatchNorm; each used by several branches with the same weights):
  out = x + r(D1 x) + r(P D3 x) + r(P D3 D1 x) + r(P D5 D3 D1 x), r = ReLU.
  Shapes are kept: [B, h, w, C] -> [B, h, w, C].
  """

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    d1, d3, d5 = (
      nn.Conv(c, (3, 3), kernel_dilation=r, padding='SAME', dtype=self.dtype, name=f'dilate{r}')
      for r in DAC_RATES
    )
    p = nn.Conv(c, (1, 1), dtype=self.dtype, name='conv1x1')
    a = d1(x)
    b = d3(a)  # D3 D1 x
    branches = (a, p(d3(x)), p(b), p(d5(b)))
    return x + sum(nn.relu(y) for y in branches)


class RMP(nn.Module):
  """Residual multi-kernel pooling: [B, h, w, C] -> [B, h, w, C + len(pools)].

  Each max-pool (window = stride = k, no padding) goes through one shared 1x1 conv to
  a single channel (with bias) and is resized bilinearly back to h x w (half-pixel
  centers: PyTorch's align_corners=False); the maps are concatenated before x. A window
  larger than the map is clipped to the map's side (the reference needs h, w >= 6, i.e.
  inputs >= 192 px; at 512 x 512 the map is 16 x 16 and nothing changes).
  """

  pools: tuple[int, ...] = RMP_POOLS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _, h, w, _ = x.shape
    conv = nn.Conv(1, (1, 1), dtype=self.dtype, name='conv')
    maps = []
    for k in self.pools:
      window = (min(k, h), min(k, w))
      y = conv(nn.max_pool(x, window, strides=window, padding='VALID'))  # [B, h/k, w/k, 1]
      maps.append(resize_bilinear(y, (h, w), align_corners=False))
    return jnp.concatenate([*maps, x], axis=-1)


def transposed_conv(features: int, kernel: int, padding: int, output_padding: int = 0, **kw):
  """PyTorch's ConvTranspose2d(kernel, stride 2, padding, output_padding) as a conv on the
  2x-dilated input, padded (kernel - 1 - padding, kernel - 1 - padding + output_padding)
  (the kernel is the spatially flipped one: the same family of functions)."""
  low = kernel - 1 - padding
  pad = (low, low + output_padding)
  return nn.Conv(features, (kernel, kernel), input_dilation=2, padding=(pad, pad), **kw)


class DecoderBlock(nn.Module):
  """1x1 CBR to in/4 channels, 3x3 stride-2 transposed CBR (x2 resolution), 1x1 CBR to
  `features`: [B, h, w, C] -> [B, 2h, 2w, features]."""

  features: int
  norm: ModuleDef
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    mid = max(1, x.shape[-1] // 4)
    bn = lambda name: self.norm(use_running_average=not train, name=name)  # noqa: E731
    x = nn.Conv(mid, (1, 1), use_bias=False, dtype=self.dtype, name='conv1')(x)
    x = nn.relu(bn('bn1')(x))
    x = transposed_conv(mid, 3, 1, 1, use_bias=False, dtype=self.dtype, name='deconv2')(x)
    x = nn.relu(bn('bn2')(x))
    x = nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype, name='conv3')(x)
    return nn.relu(bn('bn3')(x))


class CENet(nn.Module):
  """Input [B, H, W, 1] (H, W multiples of 32) -> {'logits': [B, H, W, K], 'side_logits': ()}.

  Encoder: ResNet-`resnet_depth` (base width `base_channels`) -> e1..e4 at strides 4-32.
  Context extractor: RMP(DAC(e4)), 4 more channels. Decoder: d4 = Dec(e4') + e3,
  d3 = Dec(d4) + e2, d2 = Dec(d3) + e1, d1 = Dec(d2) at stride 2. Head: 4x4 stride-2
  transposed conv to base/2 channels + ReLU, 3x3 conv + ReLU, 3x3 conv to K logits.
  """

  options: CENetOptions
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
    s = self.options
    dtype, norm = network_setup(x, s, self.axis_name, 'CE-Net (a ResNet at stride 32)')
    dac, decoder = DAC, DecoderBlock
    if s.remat:  # argument 0 is the module, so `train` is 2
      dac = nn.remat(DAC)
      decoder = nn.remat(DecoderBlock, static_argnums=(2,))

    e1, e2, e3, e4 = ResNet(
      norm=norm,
      depth=s.resnet_depth,
      base_width=s.base_channels,
      dtype=dtype,
      remat=s.remat,
      name='encoder',
    )(x.astype(dtype), train)
    e4 = dac(dtype=dtype, name='dac')(e4)
    e4 = RMP(dtype=dtype, name='rmp')(e4)  # [B, H/32, W/32, C4 + 4]
    d = e4
    for i, skip in zip((4, 3, 2), (e3, e2, e1), strict=True):
      d = decoder(features=skip.shape[-1], norm=norm, dtype=dtype, name=f'decoder{i}')(d, train)
      d = d + skip
    d = decoder(features=e1.shape[-1], norm=norm, dtype=dtype, name='decoder1')(d, train)

    head = max(1, s.base_channels // 2)  # 32 in the reference
    y = nn.relu(transposed_conv(head, 4, 1, dtype=dtype, name='finaldeconv1')(d))  # [B, H, W, .]
    y = nn.relu(nn.Conv(head, (3, 3), padding='SAME', dtype=dtype, name='finalconv2')(y))
    logits = nn.Conv(s.num_classes, (3, 3), padding='SAME', dtype=dtype, name='finalconv3')(y)
    return {'logits': logits.astype(jnp.float32), 'side_logits': ()}
