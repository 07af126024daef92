"""ResNet (He et al. 2016) as an encoder for the compared networks: CE-Net (ResNet-34), and
DeepLabV3+ and DA-Net (ResNet-50 with dilated last stages).

It follows torchvision's `resnet.py` (v1.5: a Bottleneck strides on its 3x3 conv), with a
stem for any number of input channels, stage widths in units of a base width (64 is
torchvision's), and torchvision's `replace_stride_with_dilation`: a stage listed there
keeps its resolution and dilates its 3x3 convs by the stride it drops. The first block of
such a stage runs its first 3x3 conv at the previous dilation (`first_dilation`, timm's
name), so the network computes what the strided one computes at the kept positions (the
"a trous" rule); for a Bottleneck this is exactly torchvision, which has no dilated
BasicBlock. There is no classifier: the network returns the feature of every stage.

Padding is PyTorch's, symmetric `dilation * (k - 1) // 2` on every side, also for the
strided convs (Flax's 'SAME' pads a stride-2 conv asymmetrically), so a stride-2 output
pixel i sits on input pixel 2i as in torchvision. Convs have no bias (each is followed by
a BatchNorm); kernels keep Flax's default initialization (LeCun normal), the same as
every other network of this project, not torchvision's Kaiming normal (fan out).
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecam_jax.models.layers import ModuleDef


def conv(
  features: int,
  kernel: int,
  stride: int = 1,
  dilation: int = 1,
  dtype: Any = jnp.float32,
  name: str | None = None,
) -> nn.Conv:
  """A bias-free k x k conv with PyTorch's symmetric padding `dilation * (k - 1) // 2`."""
  pad = dilation * (kernel - 1) // 2
  return nn.Conv(
    features=features,
    kernel_size=(kernel, kernel),
    strides=(stride, stride),
    kernel_dilation=(dilation, dilation),
    padding=((pad, pad), (pad, pad)),
    use_bias=False,
    dtype=dtype,
    name=name,
  )


class BasicBlock(nn.Module):
  """Two 3x3 CBRs (the second without its ReLU) plus the shortcut, then ReLU.

  features: the block's width (= its output channels, expansion 1). stride: of the first
  conv and the shortcut. dilation: of the second conv (and of the first unless
  `first_dilation` is given: the previous stage's dilation in the first block of a
  dilated stage). The shortcut is a 1x1 conv + BN when the stride or the width changes.
  """

  expansion: ClassVar[int] = 1

  features: int
  norm: ModuleDef
  stride: int = 1
  dilation: int = 1
  first_dilation: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    first = self.dilation if self.first_dilation is None else self.first_dilation
    bn = lambda name: self.norm(use_running_average=not train, name=name)  # noqa: E731
    y = conv(self.features, 3, self.stride, first, self.dtype, name='conv1')(x)
    y = nn.relu(bn('bn1')(y))
    y = conv(self.features, 3, 1, self.dilation, self.dtype, name='conv2')(y)
    y = bn('bn2')(y)
    return nn.relu(y + _shortcut(self, x, self.features, bn))


class Bottleneck(nn.Module):
  """1x1 CBR, 3x3 CBR (stride and dilation here: torchvision v1.5), 1x1 conv + BN to
  4 x features, plus the shortcut, then ReLU.

  features: the width of the inner convs; the output has `expansion * features`
  channels. first_dilation: the dilation of the 3x3 conv when it differs from
  `dilation` (the first block of a dilated stage keeps the previous one).
  """

  expansion: ClassVar[int] = 4

  features: int
  norm: ModuleDef
  stride: int = 1
  dilation: int = 1
  first_dilation: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    first = self.dilation if self.first_dilation is None else self.first_dilation
    out = self.features * self.expansion
    bn = lambda name: self.norm(use_running_average=not train, name=name)  # noqa: E731
    y = nn.relu(bn('bn1')(conv(self.features, 1, dtype=self.dtype, name='conv1')(x)))
    y = conv(self.features, 3, self.stride, first, self.dtype, name='conv2')(y)
    y = nn.relu(bn('bn2')(y))
    y = bn('bn3')(conv(out, 1, dtype=self.dtype, name='conv3')(y))
    return nn.relu(y + _shortcut(self, x, out, bn))


def _shortcut(block: nn.Module, x: jax.Array, out: int, bn) -> jax.Array:
  """torchvision's downsample: identity, or a strided 1x1 conv + BN when the block
  changes the resolution or the width (also in a dilated stage's first block, stride 1)."""
  if block.stride == 1 and x.shape[-1] == out:
    return x
  return bn('downsample_bn')(conv(out, 1, block.stride, dtype=block.dtype, name='downsample')(x))


# depth -> (block, blocks per stage): torchvision's resnet18/34/50/101.
DEPTHS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
  18: (BasicBlock, (2, 2, 2, 2)),
  34: (BasicBlock, (3, 4, 6, 3)),
  50: (Bottleneck, (3, 4, 6, 3)),
  101: (Bottleneck, (3, 4, 23, 3)),
}


def stage_channels(depth: int, base_width: int = 64) -> tuple[int, int, int, int]:
  """Output channels of the four stages: base x (1, 2, 4, 8) x the block's expansion
  ((64, 128, 256, 512) for ResNet-18/34, (256, 512, 1024, 2048) for ResNet-50/101)."""
  block, _ = DEPTHS[depth]
  return tuple(base_width * 2**i * block.expansion for i in range(4))


class ResNet(nn.Module):
  """Stem and four stages; [B, H, W, C_in] -> (c1, c2, c3, c4), the output of each stage.

  Stem: 7x7/2 conv (base_width) + BN + ReLU, then 3x3/2 max-pool: stride 4. Stage s
  (1-4) has `DEPTHS[depth][1][s - 1]` blocks of width base_width * 2**(s - 1); stages
  2-4 stride 2 in their first block, or dilate instead where
  `replace_stride_with_dilation[s - 2]` is True. Without dilation the strides are
  (4, 8, 16, 32) (H and W must be multiples of 32 for every side to halve exactly);
  (False, False, True) gives output stride 16 (DeepLabV3+), (False, True, True) 8 (DA-Net).

  norm: the BatchNorm factory (`layers.make_norm`). remat: every block is recomputed in
  the backward pass instead of keeping its activations.
  """

  norm: ModuleDef
  depth: int = 50
  base_width: int = 64
  replace_stride_with_dilation: tuple[bool, bool, bool] = (False, False, False)
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
    if self.depth not in DEPTHS:
      raise ValueError(f'ResNet depth {self.depth}; expected one of {sorted(DEPTHS)}')
    if len(self.replace_stride_with_dilation) != 3:
      raise ValueError('replace_stride_with_dilation needs 3 entries, for stages 2-4')
    block_cls, counts = DEPTHS[self.depth]
    if self.remat:  # argument 0 is the module, so `train` is 2
      block_cls = nn.remat(block_cls, static_argnums=(2,))

    x = conv(self.base_width, 7, 2, dtype=self.dtype, name='conv1')(x.astype(self.dtype))
    x = nn.relu(self.norm(use_running_average=not train, name='bn1')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # [B, H/4, W/4, C]

    features, dilation = [], 1
    dilate = (False, *self.replace_stride_with_dilation)
    for stage, (count, dilated) in enumerate(zip(counts, dilate, strict=True)):
      stride = 1 if stage == 0 else 2
      previous = dilation
      if dilated:
        dilation, stride = dilation * stride, 1
      for i in range(count):
        x = block_cls(
          features=self.base_width * 2**stage,
          norm=self.norm,
          stride=stride if i == 0 else 1,
          dilation=dilation,
          first_dilation=previous if i == 0 else dilation,
          dtype=self.dtype,
          name=f'layer{stage + 1}_{i}',
        )(x, train)
      features.append(x)
    return tuple(features)
