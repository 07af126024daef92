"""UNet++ (Zhou et al. 2018, nested U-Net): a U-Net whose skips are dense blocks of nested
nodes, built as 4uiiurz1/pytorch-nested-unet's `NestedUNet` (docs/networks/unetpp.md).

Node X(i, j), depth i = 0..4 (width f_i = base_channels * 2^i), column j = 0..4 - i:
  X(i, 0) = VGG(maxpool2(X(i-1, 0)))                        (X(0, 0) = VGG(input))
  X(i, j) = VGG(concat[X(i, 0), ..., X(i, j-1), Up(X(i+1, j-1))])   j >= 1
so X(i, j)'s input has j * f_i + f_{i+1} channels. VGG is conv unit (3x3) twice, Up a
bilinear x2 resize. Heads (1x1 conv) on X(0, 1..4): X(0, 4)'s is the prediction; with
`deep_supervision` the other three are side outputs, without it they do not exist.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecam_jax.models.baselines.unetpp_options import UNetPPOptions
from ecam_jax.models.layers import ConvUnit, ModuleDef, max_pool_2x2, network_setup
from ecam_jax.models.resize import resize_bilinear

DEPTH = 5  # levels i = 0..4; f_i = base_channels * 2^i (4uiiurz1: 32, 64, 128, 256, 512)


def node_name(i: int, j: int) -> str:
  """Module name of node X(i, j) in the parameter tree."""
  return f'x{i}_{j}'


class Node(nn.Module):
  """One node X(i, j): concat[same-level inputs..., Up(below)] -> conv unit twice.

  4uiiurz1's VGGBlock is conv (with bias) -> BN -> ReLU twice; the bias before BN is
  dropped here (project convention). `below` is None for an encoder node X(i, 0), whose
  one same-level input is the (already pooled) map.
  """

  features: int
  norm: ModuleDef
  align_corners: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, same: tuple[jax.Array, ...], below: jax.Array | None, train: bool
  ) -> jax.Array:
    inputs = list(same)  # each [B, h, w, f_i]
    if below is not None:  # [B, h/2, w/2, f_{i+1}] -> [B, h, w, f_{i+1}]
      h, w = below.shape[1:3]
      inputs.append(resize_bilinear(below, (2 * h, 2 * w), self.align_corners))
    x = jnp.concatenate(inputs, axis=-1)  # [B, h, w, j f_i + f_{i+1}]
    for k in range(2):
      unit = ConvUnit(features=self.features, norm=self.norm, dtype=self.dtype, name=f'conv{k}')
      x = unit(x, train)
    return x  # [B, h, w, f_i]


class UNetPlusPlus(nn.Module):
  """Input [B, H, W, 1] (H, W multiples of 16) -> {'logits': [B, H, W, K] from X(0, 4),
  'side_logits': (X(0, 1), X(0, 2), X(0, 3) heads) with model.deep_supervision, else ()};
  K = options.num_classes.

  options: unetpp_options.py (base_channels, deep_supervision, align_corners, and every
  network's). axis_name: the data axis BatchNorm synchronizes over in training.
  """

  options: UNetPPOptions
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
    s = self.options
    b, h, w, _ = x.shape
    dtype, norm = network_setup(x, s, self.axis_name, 'UNet++ (four pools)')
    # Argument 0 is the module: `same` 1, `below` 2, `train` 3.
    node_cls = nn.remat(Node, static_argnums=(3,)) if s.remat else Node

    def node(i: int, j: int, same: tuple, below: jax.Array | None) -> jax.Array:
      block = node_cls(
        features=s.base_channels * 2**i,
        norm=norm,
        align_corners=s.align_corners,
        dtype=dtype,
        name=node_name(i, j),
      )
      return block(same, below, train)

    # X[i][j]: [B, H / 2^i, W / 2^i, f_i]. Column by column of the encoder, as 4uiiurz1
    # computes them: X(i, 0) and then the diagonal X(i-1, 1), ..., X(0, i) it completes.
    grid: list[list[jax.Array]] = [[] for _ in range(DEPTH)]
    grid[0].append(node(0, 0, (x.astype(dtype),), None))
    for i in range(1, DEPTH):
      grid[i].append(node(i, 0, (max_pool_2x2(grid[i - 1][0]),), None))
      for level in range(i - 1, -1, -1):
        j = i - level
        grid[level].append(node(level, j, tuple(grid[level][:j]), grid[level + 1][j - 1]))

    def head(j: int, name: str) -> jax.Array:
      conv = nn.Conv(s.num_classes, (1, 1), dtype=dtype, name=name)
      return conv(grid[0][j]).astype(jnp.float32)  # [B, H, W, K]

    sides = DEPTH - 2 if s.deep_supervision else 0
    side_logits = tuple(head(j, f'side{j}') for j in range(1, 1 + sides))
    return {'logits': head(DEPTH - 1, 'head'), 'side_logits': side_logits}
