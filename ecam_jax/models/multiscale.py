"""MuS: the atrous spatial pyramid (ASPP) block of the bottleneck."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecam_jax.models.layers import ConvUnit, ModuleDef


class MultiScale(nn.Module):
  """Parallel 3x3 atrous conv units (rates 6, 12, 18), concatenated, then a 1x1 conv
  unit back to C channels: F_S. Options (off in the paper): DeepLabV3's extra 1x1
  branch and its image-pooling branch."""

  norm: ModuleDef
  rates: tuple[int, ...]
  use_1x1_branch: bool
  use_image_pool: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f: jax.Array, train: bool) -> jax.Array:
    b, h, w, c = f.shape

    def unit(name: str, **kwargs) -> ConvUnit:
      return ConvUnit(features=c, norm=self.norm, dtype=self.dtype, name=name, **kwargs)

    branches = [unit(f'rate{r}', dilation=r)(f, train) for r in self.rates]
    if self.use_1x1_branch:
      branches.append(unit('conv1x1', kernel_size=(1, 1))(f, train))
    if self.use_image_pool:
      pooled = jnp.mean(f, axis=(1, 2), keepdims=True)
      pooled = unit('image_pool', kernel_size=(1, 1))(pooled, train)
      branches.append(jnp.broadcast_to(pooled, (b, h, w, c)))
    x = jnp.concatenate(branches, axis=-1)
    return unit('project', kernel_size=(1, 1))(x, train)
