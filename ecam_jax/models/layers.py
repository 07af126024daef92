"""Convolution building blocks: the conv unit, EC (asymmetric conv) and its folding,
the 2x2 up-convolution and the 2x2 max-pool. NHWC throughout."""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecam_jax.models.norm import BatchNorm

ModuleDef = Callable[..., nn.Module]

# Names of EC's three branches inside its parameter tree, and their kernel shapes.
EC_BRANCHES = {'square': (3, 3), 'hor': (1, 3), 'ver': (3, 1)}
EC_FUSED = 'fused'


def make_norm(axis_name: str | None, momentum: float, epsilon: float, dtype: Any) -> ModuleDef:
  """The one BatchNorm of every network (docs/model.md fixes its settings): statistics
  synchronized over `axis_name`, and over the real rows only when the train step pads
  the batch (norm.py)."""
  return functools.partial(
    BatchNorm, momentum=momentum, epsilon=epsilon, axis_name=axis_name, dtype=dtype
  )


def network_setup(
  x: jax.Array, options: Any, axis_name: str | None, network: str
) -> tuple[Any, ModuleDef]:
  """What every network does first: checks that the input's sides [B, H, W, C] are
  multiples of `options.input_multiple()` (its total downsampling) and returns the compute
  dtype and the BatchNorm factory (make_norm with the options' momentum and epsilon)."""
  h, w = x.shape[1:3]
  multiple = options.input_multiple()
  if h % multiple or w % multiple:
    raise ValueError(f'input of {h}x{w}: {network} needs sides that are multiples of {multiple}')
  dtype = jnp.dtype(options.dtype)
  return dtype, make_norm(axis_name, options.bn_momentum, options.bn_epsilon, dtype)


class ConvUnit(nn.Module):
  """Conv (no bias) -> BatchNorm -> ReLU."""

  features: int
  norm: ModuleDef
  kernel_size: tuple[int, int] = (3, 3)
  dilation: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Conv(
      self.features,
      self.kernel_size,
      kernel_dilation=self.dilation,
      padding='SAME',
      use_bias=False,
      dtype=self.dtype,
    )(x)
    return nn.relu(self.norm(use_running_average=not train)(x))


class AsymConv(nn.Module):
  """EC: parallel 3x3, 1x3 and 3x1 convs, each with its own BatchNorm, summed, ReLU.

  With `folded=True` it is the single 3x3 conv with bias that `fold_ec` makes from a
  trained unfolded block (ACNet's structural re-parameterization), for inference.
  """

  features: int
  norm: ModuleDef
  folded: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.folded:
      conv = nn.Conv(self.features, (3, 3), padding='SAME', dtype=self.dtype, name=EC_FUSED)
      return nn.relu(conv(x))
    total = 0.0
    for name, kernel in EC_BRANCHES.items():
      conv = nn.Conv(
        self.features, kernel, padding='SAME', use_bias=False, dtype=self.dtype, name=name
      )
      total = total + self.norm(use_running_average=not train, name=f'{name}_bn')(conv(x))
    return nn.relu(total)


def fold_branches(params: dict, stats: dict, epsilon: float) -> dict:
  """One EC block's branches and BatchNorms -> {'kernel': [3, 3, I, O], 'bias': [O]}.

  Each branch is conv(x, W) then gamma * (. - mean) / sqrt(var + eps) + beta, which is
  conv(x, W * s) + (beta - mean * s) with s = gamma / sqrt(var + eps); the 1x3 and 3x1
  kernels sit in the middle row and column of a 3x3 one, so the three add up.
  """
  kernel, bias = 0.0, 0.0
  for name, (kh, kw) in EC_BRANCHES.items():
    bn, st = params[f'{name}_bn'], stats[f'{name}_bn']
    s = bn['scale'] / jnp.sqrt(st['var'] + epsilon)
    w = params[name]['kernel'] * s
    top, left = (3 - kh) // 2, (3 - kw) // 2
    w = jnp.pad(w, ((top, 3 - kh - top), (left, 3 - kw - left), (0, 0), (0, 0)))
    kernel = kernel + w
    bias = bias + bn['bias'] - st['mean'] * s
  return {'kernel': kernel, 'bias': bias}


def _is_ec(node: Any) -> bool:
  return isinstance(node, dict) and all(k in node for k in EC_BRANCHES)


def fold_ec(variables: dict, epsilon: float) -> dict:
  """Variables of an unfolded model -> variables of the same model with `folded=True`.

  Walks the parameter tree; every EC block is replaced by its fused conv and its
  BatchNorm statistics are dropped. Everything else is returned unchanged.
  """

  def walk(params: dict, stats: dict) -> tuple[dict, dict]:
    if _is_ec(params):
      return {EC_FUSED: fold_branches(params, stats, epsilon)}, {}
    new_params, new_stats = {}, {}
    for key, node in params.items():
      if isinstance(node, dict):
        new_params[key], sub = walk(node, stats.get(key, {}))
        if sub:
          new_stats[key] = sub
      else:
        new_params[key] = node
    new_stats.update({k: v for k, v in stats.items() if not isinstance(v, dict)})
    return new_params, new_stats

  params, stats = walk(dict(variables['params']), dict(variables.get('batch_stats', {})))
  return {'params': params, 'batch_stats': stats}


class UpConv2x2(nn.Module):
  """2x2 transposed conv with stride 2 and bias (U-Net's up-convolution).

  The four output positions of each input pixel do not overlap, so it is one matmul
  [.., C] x [C, 2*2*O] and a depth-to-space reshape: y[2i+p, 2j+q] = x[i, j] K[p, q].
  On CPU this is much faster than XLA's dilated-convolution lowering (README, Performance).
  """

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    kernel = self.param(
      'kernel', nn.initializers.lecun_normal(), (2, 2, c, self.features), jnp.float32
    )
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = jnp.einsum('bhwc,pqco->bhpwqo', x, kernel)  # [B, H, 2, W, 2, O]
    return y.reshape(b, 2 * h, 2 * w, self.features) + bias


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool with stride 2 as a reshape and a max (faster than reduce_window)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
