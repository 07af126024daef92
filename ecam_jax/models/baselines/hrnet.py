"""HRNetV2 (Wang et al., "Deep High-Resolution Representation Learning for Visual
Recognition", TPAMI 2021), after the authors' segmentation code
(github.com/HRNet/HRNet-Semantic-Segmentation, branch master, lib/models/seg_hrnet.py):
a stride-4 stem and a stage of Bottlenecks, then three stages that keep every resolution
they have and add a coarser one (strides 4, 8, 16, 32), whose modules run BasicBlocks on
each branch and fuse all branches into all others; the head upsamples the four branches
to stride 4, concatenates them and classifies each pixel.

As built here (docs/networks/hrnet.md lists every departure): the stem takes 1 channel
and every weight starts from the project's initialization (the reference: ImageNet
weights, or convs drawn from N(0, 0.001)); the branch widths are `model.base_channels` x
(1, 2, 4, 8) (48: W48, 18: W18) and the depths `model.size`; the head's 1x1 conv
before its BatchNorm has no bias; the logits are resized bilinearly to the input's size
(the reference does so in its loss).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecam_jax.models.baselines.hrnet_options import SIZES, HRNetOptions
from ecam_jax.models.baselines.resnet import BasicBlock, Bottleneck, conv
from ecam_jax.models.layers import ModuleDef, network_setup
from ecam_jax.models.resize import resize_bilinear

STEM_CHANNELS = 64  # the stem's two convs and stage 1's Bottleneck planes, at every width


def _conv_bn(x, features, kernel, stride, norm, train, dtype, name):
  """Bias-free conv (PyTorch's symmetric padding) + BatchNorm, named name_conv, name_bn."""
  x = conv(features, kernel, stride, dtype=dtype, name=f'{name}_conv')(x)
  return norm(use_running_average=not train, name=f'{name}_bn')(x)


class Fuse(nn.Module):
  """HRNet's exchange unit: every branch receives every other.

  Branch i (width C_i, stride 4 * 2**i) gets y_i = ReLU(sum_j f_ij(x_j)), summed in the
  order j = 0, 1, ... (the reference's), where f_ii is the identity; for j > i, a 1x1
  conv C_j -> C_i + BN, then bilinear upsampling to x_i's grid (half-pixel centres:
  PyTorch's align_corners=False); for j < i, i - j 3x3 stride-2 convs + BN, the first
  i - j - 1 keeping C_j and followed by ReLU, the last to C_i without one.
  """

  norm: ModuleDef
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs: tuple[jax.Array, ...], train: bool) -> tuple[jax.Array, ...]:
    fused = []
    for i, target in enumerate(xs):
      total = 0.0
      for j, source in enumerate(xs):
        y = source
        if j > i:
          y = _conv_bn(y, target.shape[-1], 1, 1, self.norm, train, self.dtype, f'fuse{i}_{j}')
          y = resize_bilinear(y, target.shape[1:3], align_corners=False)
        for k in range(i - j):  # j < i: down by 2 ** (i - j)
          last = k == i - j - 1
          width = target.shape[-1] if last else source.shape[-1]
          name = f'fuse{i}_{j}_{k}'
          y = _conv_bn(y, width, 3, 2, self.norm, train, self.dtype, name)
          y = y if last else nn.relu(y)
        total = total + y
      fused.append(nn.relu(total))
    return tuple(fused)


class HighResolutionModule(nn.Module):
  """`blocks` BasicBlocks on each branch (widths kept), then `Fuse`:
  ([B, H/4 / 2**i, W/4 / 2**i, C_i])_i -> the same shapes."""

  blocks: int
  norm: ModuleDef
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, xs: tuple[jax.Array, ...], train: bool) -> tuple[jax.Array, ...]:
    block_cls, fuse_cls = BasicBlock, Fuse
    if self.remat:  # argument 0 is the module, so `train` is 2
      block_cls = nn.remat(BasicBlock, static_argnums=(2,))
      fuse_cls = nn.remat(Fuse, static_argnums=(2,))
    branches = []
    for i, x in enumerate(xs):
      for k in range(self.blocks):
        x = block_cls(x.shape[-1], self.norm, dtype=self.dtype, name=f'branch{i}_{k}')(x, train)
      branches.append(x)
    return fuse_cls(self.norm, self.dtype, name='fuse')(tuple(branches), train)


class HRNet(nn.Module):
  """Input [B, H, W, 1] (H, W multiples of 32) -> {'logits': [B, H, W, K], 'side_logits': ()}.

  Stem: two 3x3 stride-2 CBRs (64 channels) -> stage 1: Bottlenecks (planes 64, 256 out),
  [B, H/4, W/4, 256]. Before stage s = 2, 3, 4 a transition gives branch i < s - 1 a 3x3
  CBR to C_i where its width changes (only after stage 1) and adds branch s - 1 by a 3x3
  stride-2 CBR from the coarsest branch; stage s is a stack of `HighResolutionModule`s on
  branches of widths C_i = base_channels * 2**i at strides 4 * 2**i. Head: branches 1-3
  upsampled bilinearly to branch 0's grid and concatenated (15 C channels), 1x1 CBR, 1x1
  conv to K logits (with bias), bilinear upsampling x4 to the input's size.
  """

  options: HRNetOptions
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
    s = self.options
    dtype, norm = network_setup(x, s, self.axis_name, 'HRNet (four branches to stride 32)')
    bottlenecks, modules, blocks = SIZES[s.size]
    bottleneck_cls = nn.remat(Bottleneck, static_argnums=(2,)) if s.remat else Bottleneck

    def cbr(y, features, stride, name):
      return nn.relu(_conv_bn(y, features, 3, stride, norm, train, dtype, name))

    y = cbr(x.astype(dtype), STEM_CHANNELS, 2, 'stem1')  # [B, H/2, W/2, 64]
    y = cbr(y, STEM_CHANNELS, 2, 'stem2')  # [B, H/4, W/4, 64]
    for k in range(bottlenecks):
      y = bottleneck_cls(STEM_CHANNELS, norm, dtype=dtype, name=f'layer1_{k}')(y, train)
    xs = (y,)  # [B, H/4, W/4, 256]

    for stage, count in zip((2, 3, 4), modules, strict=True):
      widths = [s.base_channels * 2**i for i in range(stage)]
      name = f'transition{stage - 1}'
      kept = tuple(
        b if b.shape[-1] == c else cbr(b, c, 1, f'{name}_{i}')
        for i, (b, c) in enumerate(zip(xs, widths[: len(xs)], strict=True))
      )
      xs = (*kept, cbr(xs[-1], widths[-1], 2, f'{name}_{stage - 1}'))
      for m in range(count):
        module = HighResolutionModule(blocks, norm, dtype, s.remat, name=f'stage{stage}_{m}')
        xs = module(xs, train)

    grid = xs[0].shape[1:3]  # [B, H/4, W/4, C], [B, H/8, W/8, 2C], ...
    y = jnp.concatenate(
      [xs[0], *(resize_bilinear(b, grid, align_corners=False) for b in xs[1:])], axis=-1
    )  # [B, H/4, W/4, 15 C]
    y = nn.relu(_conv_bn(y, y.shape[-1], 1, 1, norm, train, dtype, 'head'))
    y = nn.Conv(s.num_classes, (1, 1), dtype=dtype, name='classifier')(y)  # [B, H/4, W/4, K]
    logits = resize_bilinear(y.astype(jnp.float32), x.shape[1:3], align_corners=False)
    return {'logits': logits, 'side_logits': ()}
