"""Attention blocks of the bottleneck: CC, SC and CoA (the paper's, eq. 4-9), and the
baselines of Table V, SE and CBAM. Inputs are the H/16 features F: [B, H, W, C]."""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecam_jax.models.layers import ModuleDef


class ConvTranspose1D(nn.Module):
  """PyTorch's ConvTranspose1d (with bias) on [B, L, F] signals.

  y[n] = sum_i sum_k x[i] w[k] over n = i * stride + k - padding, with
  `output_padding` extra positions at the end. Written out because Flax's padding
  convention for transposed convs differs from PyTorch's, whose numbers docs/model.md uses.
  """

  features: int
  kernel_size: int
  stride: int
  padding: int
  output_padding: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param(
      'kernel', nn.initializers.lecun_normal(), (k, x.shape[-1], self.features), jnp.float32
    )
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    lo = k - 1 - self.padding
    y = jax.lax.conv_general_dilated(
      x,
      kernel[::-1],
      window_strides=(1,),
      padding=[(lo, lo + self.output_padding)],
      lhs_dilation=(self.stride,),
      dimension_numbers=('NWC', 'WIO', 'NWC'),
    )
    return y + bias


class ChannelCorrelation(nn.Module):
  """CC (eq. 5-7): a 1-D conv autoencoder over the channel axis, sigmoid, rescale F.

  theta = mean_HW F (eq. 5) is read as a signal of length C with `hidden` features;
  conv k3 s1 -> BN -> ReLU -> conv k7 s2 -> BN -> ReLU -> transposed conv k7 s2 back to
  length C -> sigmoid = Theta (eq. 6); F^C = F * Theta per channel (eq. 7).
  """

  norm: ModuleDef
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f: jax.Array, train: bool) -> jax.Array:
    c = f.shape[-1]
    theta = jnp.mean(f, axis=(1, 2))[..., None]  # [B, C, 1]
    t = nn.Conv(self.hidden, (3,), padding=[(1, 1)], use_bias=False, dtype=self.dtype)(theta)
    t = nn.relu(self.norm(use_running_average=not train)(t))
    t = nn.Conv(
      self.hidden, (7,), strides=(2,), padding=[(3, 3)], use_bias=False, dtype=self.dtype
    )(t)
    t = nn.relu(self.norm(use_running_average=not train)(t))  # [B, ceil(C/2), hidden]
    # PyTorch: padding 3, output_padding 1 for even C; whatever gives length C exactly.
    output_padding = c - ((t.shape[1] - 1) * 2 - 2 * 3 + 7)
    t = ConvTranspose1D(
      features=1,
      kernel_size=7,
      stride=2,
      padding=3,
      output_padding=output_padding,
      dtype=self.dtype,
    )(t)  # [B, C, 1]
    weights = nn.sigmoid(t[..., 0].astype(jnp.float32)).astype(f.dtype)  # Theta: [B, C]
    return f * weights[:, None, None, :]


def attention_scale(scale: float | str, channels: int) -> float:
  """docs/model.md: the paper's 1.0, or 'rsqrt' = 1/sqrt(C)."""
  return 1.0 / math.sqrt(channels) if scale == 'rsqrt' else float(scale)


ATTENTION_IMPLS = ('fused', 'chunked', 'naive')


def spatial_attention(
  f: jax.Array, value: jax.Array, scale: float, *, impl: str, chunk: int
) -> jax.Array:
  """SC (eq. 8-9) applied to `value`: out_i = sum_j softmax_j(scale * E_i . E_j) value_j.

  E = reshape(F) to [B, HW, C], both the queries and the keys (one head, no projections);
  `impl` and `chunk` as in `dot_product_attention`.
  """
  b, h, w, c = f.shape
  e = f.reshape(b, h * w, c)
  v = value.reshape(b, h * w, value.shape[-1])
  out = dot_product_attention(e, e, v, scale, impl=impl, chunk=chunk)
  return out.reshape(b, h, w, value.shape[-1])


def dot_product_attention(
  q: jax.Array, k: jax.Array, v: jax.Array, scale: float, *, impl: str, chunk: int
) -> jax.Array:
  """One head of attention, out_i = sum_j softmax_j(scale * q_i . k_j) v_j, with the
  logits and the softmax in float32: q [B, Nq, D], k [B, Nk, D], v [B, Nk, Dv] ->
  [B, Nq, Dv] in v's dtype. `impl` (model.attention_impl):
  - 'fused': `jax.nn.dot_product_attention`. Its default implementation (this JAX) is
    XLA's, which builds the [Nq, Nk] map S as 'naive' does; a fused kernel that never
    stores S is the cuDNN one, for head sizes it supports. It needs Dv = D: the smaller
    of the two is zero-padded to the larger (exact: zeros add nothing to q_i . k_j, and
    padded value channels are cut off the output);
  - 'chunked': queries in blocks of `chunk` rows (model.attention_chunk), each block
    rematerialized in the backward pass: memory O(chunk * Nk) instead of O(Nq * Nk) on
    every backend;
  - 'naive': S built explicitly (the reference the tests compare against).
  """
  if impl == 'naive':
    return _attend(q, k, v, scale)
  if impl == 'chunked':
    return _chunked(q, k, v, scale, chunk)
  if impl == 'fused':
    dv, width = v.shape[-1], max(q.shape[-1], v.shape[-1])
    q, k, v = (jnp.pad(t, ((0, 0), (0, 0), (0, width - t.shape[-1]))) for t in (q, k, v))
    out = jax.nn.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None], scale=scale)
    return out[:, :, 0, :dv]
  raise ValueError(f'attention impl {impl!r}; expected one of {ATTENTION_IMPLS}')


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
  """softmax(scale q k^T) v with the logits and softmax in float32: [B, Nq, Dv]."""
  logits = jnp.einsum('bid,bjd->bij', q, k, preferred_element_type=jnp.float32) * scale
  s = jax.nn.softmax(logits, axis=-1)  # S: [B, Nq, Nk]
  return jnp.einsum('bij,bjc->bic', s.astype(v.dtype), v)


def _chunked(q: jax.Array, k: jax.Array, v: jax.Array, scale: float, chunk: int) -> jax.Array:
  b, n, d = q.shape
  chunk = min(chunk, n)
  pad = -n % chunk
  blocks = jnp.pad(q, ((0, 0), (0, pad), (0, 0))) if pad else q
  blocks = blocks.reshape(b, -1, chunk, d).swapaxes(0, 1)  # [blocks, B, chunk, D]
  attend = jax.checkpoint(lambda qb: _attend(qb, k, v, scale))
  out = jax.lax.map(attend, blocks)  # [blocks, B, chunk, Dv]
  return out.swapaxes(0, 1).reshape(b, -1, v.shape[-1])[:, :n]


class SpatialCorrelation(nn.Module):
  """SC as a module (it has no parameters): SC(F, value) per eq. 8-9; `impl` and
  `chunk` as in `spatial_attention`."""

  scale: float | str
  impl: str
  chunk: int

  def __call__(self, f: jax.Array, value: jax.Array) -> jax.Array:
    scale = attention_scale(self.scale, f.shape[-1])
    return spatial_attention(f, value, scale, impl=self.impl, chunk=self.chunk)


class CollaborativeAttention(nn.Module):
  """CoA (eq. 4): F_A = SC(F, value=F^C) + F with F^C = CC(F).

  With one part switched off (Table II rows 2-3): CC alone gives F^C + F; SC alone
  gives SC(F, value=F) + F.
  """

  norm: ModuleDef
  use_cc: bool
  use_sc: bool
  scale: float | str  # SC's, see attention_scale
  impl: str  # SC's, see spatial_attention
  chunk: int  # SC's, see spatial_attention
  hidden: int  # CC's
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f: jax.Array, train: bool) -> jax.Array:
    value = f
    if self.use_cc:
      value = ChannelCorrelation(norm=self.norm, hidden=self.hidden, dtype=self.dtype)(f, train)
    if self.use_sc:
      value = SpatialCorrelation(scale=self.scale, impl=self.impl, chunk=self.chunk)(f, value)
    return value + f


class SqueezeExcitation(nn.Module):
  """SE: global average pool, dense C -> C/r, ReLU, dense -> C, sigmoid, rescale."""

  reduction: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f: jax.Array, train: bool) -> jax.Array:
    c = f.shape[-1]
    z = jnp.mean(f, axis=(1, 2))
    z = nn.relu(nn.Dense(max(c // self.reduction, 1), use_bias=False, dtype=self.dtype)(z))
    z = nn.sigmoid(nn.Dense(c, use_bias=False, dtype=self.dtype)(z))
    return f * z[:, None, None, :]


class CBAM(nn.Module):
  """CBAM: channel attention (shared MLP on avg- and max-pooled vectors), then spatial
  attention (7x7 conv + BN over the channel-wise [mean, max] maps), each a sigmoid
  rescale."""

  norm: ModuleDef
  reduction: int
  kernel: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f: jax.Array, train: bool) -> jax.Array:
    c = f.shape[-1]
    hidden = nn.Dense(max(c // self.reduction, 1), use_bias=False, dtype=self.dtype)
    out = nn.Dense(c, use_bias=False, dtype=self.dtype)

    def mlp(z):
      return out(nn.relu(hidden(z)))

    channel = nn.sigmoid(mlp(jnp.mean(f, axis=(1, 2))) + mlp(jnp.max(f, axis=(1, 2))))
    f = f * channel[:, None, None, :]
    pooled = jnp.concatenate(
      [jnp.mean(f, axis=-1, keepdims=True), jnp.max(f, axis=-1, keepdims=True)], axis=-1
    )
    s = nn.Conv(1, (self.kernel, self.kernel), padding='SAME', use_bias=False, dtype=self.dtype)(
      pooled
    )
    s = nn.sigmoid(self.norm(use_running_average=not train)(s))
    return f * s
