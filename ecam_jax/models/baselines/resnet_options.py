"""The options of the networks built on the shared ResNet encoder (resnet.py): CE-Net,
DeepLabV3+ and DA-Net each declare these with their own defaults."""

from typing import Any

from ecam_jax.models.options import option

DEPTHS = (18, 34, 50, 101)  # resnet.py DEPTHS


def resnet_depth(default: int) -> Any:
  return option(
    default,
    'depth of the ResNet encoder: 18, 34 (BasicBlocks) or 50, 101 (Bottlenecks, 4x wider)',
    choices=DEPTHS,
  )


def output_stride(default: int) -> Any:
  return option(
    default,
    "the ResNet's output stride: the stages past it dilate instead of striding",
    choices=(8, 16),
  )
