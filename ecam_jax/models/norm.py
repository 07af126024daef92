"""BatchNorm whose training statistics are those of the real rows of the global batch.

When the global batch does not split evenly over the devices (a batch of 4 on 3 or 8
GPUs), the train step pads it with rows that must not count anywhere: not in the loss,
and not in BatchNorm's statistics. `flax.linen.BatchNorm` takes a mask, but reduces it
as the mean over devices of per-device masked means, which is wrong when devices hold
different numbers of real rows (and NaN on a device that holds none). This BatchNorm
sums (x, x^2, count) over the rows and the `axis_name` devices instead, so its
statistics are exactly those of the unpadded global batch.

The row mask reaches every BatchNorm of a network through `real_rows(mask)`, a context
the train step opens while it traces the model, so that no network has to thread a mask
through its modules. Outside that context (evaluation, inference, unpadded training)
every row counts. Variables, their names and the arithmetic are flax's BatchNorm's
(params `scale`, `bias`; batch_stats `mean`, `var`; the fast variance E[x^2] - E[x]^2
in float32), so checkpoints of either load into the other.
"""

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_ROWS: contextvars.ContextVar[jax.Array | None] = contextvars.ContextVar('rows', default=None)


@contextlib.contextmanager
def real_rows(mask: jax.Array | None) -> Iterator[None]:
  """While a model is traced inside this context, its BatchNorms compute training
  statistics over the rows where `mask` ([B] bool, this device's rows) is True."""
  token = _ROWS.set(mask)
  try:
    yield
  finally:
    _ROWS.reset(token)


def batch_statistics(
  x: jax.Array, axis_name: str | None, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Per-channel mean and (biased) variance of `x` [B, ..., C] over every axis but the
  last, over the rows where `mask` [B] holds, summed over `axis_name`'s devices."""
  x = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  per_row = x[0, ..., 0].size  # pixels of one row
  if mask is None:
    count = jnp.asarray(x.shape[0] * per_row, jnp.float32)
    sums = jnp.stack([jnp.sum(x, axes), jnp.sum(x * x, axes)])
  else:
    weight = mask.astype(jnp.float32).reshape(-1, *([1] * (x.ndim - 1)))
    count = jnp.sum(weight) * per_row
    sums = jnp.stack([jnp.sum(x * weight, axes), jnp.sum(x * x * weight, axes)])
  if axis_name is not None:
    sums, count = lax.psum((sums, count), axis_name)
  mean, mean_sq = sums[0] / count, sums[1] / count
  return mean, jnp.maximum(0.0, mean_sq - mean * mean)


class BatchNorm(nn.Module):
  """flax.linen.BatchNorm's variables and arithmetic (feature axis last), with the
  statistics of `batch_statistics`. The class name keeps flax's auto names
  (`BatchNorm_0`, ...) so parameter trees are unchanged."""

  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    use_running_average = nn.merge_param(
      'use_running_average', self.use_running_average, use_running_average
    )
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), features)
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), features)
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axis_name = None if self.is_initializing() else self.axis_name
      mean, var = batch_statistics(x, axis_name, _ROWS.get())
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    scale = self.param('scale', nn.initializers.ones, features, jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, features, jnp.float32)
    y = (x - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype or jnp.result_type(x, jnp.float32))
