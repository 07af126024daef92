"""Dropout and stochastic depth whose draws do not depend on how the batch is sharded.

`flax.linen.Dropout` draws one mask for the batch a device holds, from a key that every
device shares: on 8 devices each device would draw the mask of rows 0..B/8-1, and the
sharded step would differ from the single-device one. Here each row draws its own mask
from the module's key folded with the row's index in the global batch (device index x
local batch + i, from `axis_name`), so a row is dropped the same way on any number of
devices. The module's key comes from the 'dropout' RNG stream, which the train step
provides (`steps.make_train_step`); outside training (`train=False`) both are the
identity and need no key.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

RNG = 'dropout'  # the RNG stream name the train step passes to model.apply


def row_keys(key: jax.Array, local_batch: int, axis_name: str | None) -> jax.Array:
  """One key per row of this device's batch: `key` folded with the global row index."""
  first = 0 if axis_name is None else lax.axis_index(axis_name) * local_batch
  return jax.vmap(lambda r: jax.random.fold_in(key, r))(first + jnp.arange(local_batch))


def _keep(module: nn.Module, x: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
  """x scaled by 1 / (1 - rate) where a per-row Bernoulli(1 - rate) mask of `shape`
  (broadcast over the row) keeps it, else 0."""
  keys = row_keys(module.make_rng(RNG), x.shape[0], module.axis_name)
  keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - rate, shape))(keys)
  return jnp.where(keep, x * (1.0 / (1.0 - rate)), 0).astype(x.dtype)


class Dropout(nn.Module):
  """Inverted dropout of [B, ..., C]: each element, or with `channelwise` each channel
  of a row (PyTorch's Dropout2d on an NHWC map), is zeroed with probability `rate`."""

  rate: float
  axis_name: str | None = None
  channelwise: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not train or self.rate == 0:
      return x
    shape = (*[1] * (x.ndim - 2), x.shape[-1]) if self.channelwise else x.shape[1:]
    return _keep(self, x, self.rate, shape)


class DropPath(nn.Module):
  """Stochastic depth (Huang et al. 2016): a residual branch's output [B, ...] is zeroed
  for a whole row with probability `rate`, and scaled by 1 / (1 - rate) otherwise."""

  rate: float
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not train or self.rate == 0:
      return x
    return _keep(self, x, self.rate, (1,) * (x.ndim - 1))
