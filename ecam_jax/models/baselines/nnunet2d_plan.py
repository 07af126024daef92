"""The network nnU-Net v2's planner makes for a 2-D patch: its stages, strides, kernel sizes
and widths (docs/networks/nnunet2d.md). Pure Python, no jax: the docs and tests call it.

nnU-Net (`experiment_planners/network_topology.py`, `get_pool_and_conv_props`, called by
`default_experiment_planner.py` with min_feature_map_size 4 and no cap on the pools)
halves the patch axis by axis, step after step, for isotropic spacing (a slice resized to a
square here) as follows:

- an axis may be halved while it is at least 2 * min_feature_map_size (8) long; a halving
  rounds up (ceil), so the bottleneck is 4 to 7 pixels along an axis that stopped that way;
- when only one axis may still be halved, it is halved only while at least
  3 * min_feature_map_size (12) long;
- every axis that may be halved in a step is halved in that step, so a stage's stride is
  (2, 2), or (2, 1) / (1, 2) once the shorter axis has stopped;
- the patch is then rounded up to a multiple of 2^(halvings of the axis) on each axis;
- kernels are 3x3 at every stage (nnU-Net sets an axis's kernel to 3 once its spacing is
  within a factor 2 of the finest one, at once for isotropic spacing);
- stage s has min(base * 2^s, max) channels (UNet_base_num_features 32,
  UNet_max_features_2d 512).

The planner's memory loop, which shrinks a patch whose estimated feature maps exceed its
reference, keeps every patch up to 512 x 512 (docs/networks/nnunet2d.md); its encoder and
decoder block counts (2 per stage) list 14 encoder stages, the most a plan may have.
"""

import dataclasses
import math

MAX_STAGES = 14  # len(UNet_blocks_per_stage_encoder) in nnU-Net's planner


@dataclasses.dataclass(frozen=True)
class Plan:
  """nnU-Net's 2-D PlainConvUNet for one patch. Stage s works at the patch divided by the
  product of strides[0..s]; strides[0] is (1, 1)."""

  patch_size: tuple[int, int]  # the input rounded up to multiples of 2^pools_per_axis
  in_channels: int
  strides: tuple[tuple[int, int], ...]  # per stage
  kernel_sizes: tuple[tuple[int, int], ...]  # per stage
  features: tuple[int, ...]  # per stage

  @property
  def num_stages(self) -> int:
    return len(self.strides)

  @property
  def pools_per_axis(self) -> tuple[int, int]:
    return tuple(sum(s[a] == 2 for s in self.strides) for a in range(2))

  def reduction(self, stage: int) -> tuple[int, int]:
    """How much smaller than the patch stage `stage`'s maps are, per axis."""
    return tuple(math.prod(s[a] for s in self.strides[: stage + 1]) for a in range(2))


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def plan(
  height: int,
  width: int,
  in_channels: int = 1,
  base_features: int = 32,
  max_features: int = 512,
  min_feature_map_size: int = 4,
) -> Plan:
  """nnU-Net's plan for a `height` x `width` patch of isotropic spacing (module docstring).
  ValueError when it has no halving (no U-Net) or more stages than nnU-Net lists."""
  size = [height, width]
  strides = [(1, 1)]
  while True:
    halve = [size[a] >= 2 * min_feature_map_size for a in range(2)]
    if sum(halve) == 1 and size[halve.index(True)] < 3 * min_feature_map_size:
      break
    if not any(halve):
      break
    strides.append(tuple(2 if h else 1 for h in halve))
    size = [-(-n // 2) if h else n for n, h in zip(size, halve, strict=True)]
  if len(strides) < 2:
    raise ValueError(
      f"input of {height}x{width}: nnU-Net's plan has no downsampling (a side must be at "
      f'least {2 * min_feature_map_size}, or {3 * min_feature_map_size} when the other is '
      'shorter): no U-Net to build'
    )
  if len(strides) > MAX_STAGES:
    raise ValueError(
      f"input of {height}x{width}: nnU-Net's plan has {len(strides)} stages, more than its "
      f'planner lists ({MAX_STAGES})'
    )
  pools = [sum(s[a] == 2 for s in strides) for a in range(2)]
  patch = tuple(_round_up(n, 2**p) for n, p in zip((height, width), pools, strict=True))
  n = len(strides)
  return Plan(
    patch_size=patch,
    in_channels=in_channels,
    strides=tuple(strides),
    kernel_sizes=((3, 3),) * n,
    features=tuple(min(base_features * 2**s, max_features) for s in range(n)),
  )
