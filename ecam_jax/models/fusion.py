"""The bottleneck module: CoAG-MuSFu (eq. 10) and every ablation of it.

The attention part A (CoA, or one of its halves, or SE / CBAM) and the multi-scale
part MuS both read the encoder's deepest features F; `fusion` says how they combine:
'conv' (the paper, eq. 10): a 1x1 conv unit on concat(F_A, F_S); 'add' ([14]):
F_A + F_S; 'serial' ([8], [10]): MuS(A(F)). With one part off, the other alone is
applied; with both off, F passes through (plain U-Net).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecam_jax.models.attention import CBAM, CollaborativeAttention, SqueezeExcitation
from ecam_jax.models.layers import ConvUnit, ModuleDef
from ecam_jax.models.multiscale import MultiScale
from ecam_jax.models.unet_options import UNetOptions


class Bottleneck(nn.Module):
  """F [B, H/16, W/16, C] -> the bottleneck's output, same shape; the options it reads:
  attention, use_cc, use_sc, use_mus, fusion and each part's own (unet_options.py)."""

  options: UNetOptions
  norm: ModuleDef
  dtype: Any = jnp.float32

  def _attention(self, f: jax.Array, train: bool) -> jax.Array:
    s = self.options
    if s.attention == 'coa':
      block = CollaborativeAttention(
        norm=self.norm,
        use_cc=s.use_cc,
        use_sc=s.use_sc,
        scale=s.attention_scale,
        impl=s.attention_impl,
        chunk=s.attention_chunk,
        hidden=s.cc_hidden,
        dtype=self.dtype,
        name='coa',
      )
    elif s.attention == 'se':
      block = SqueezeExcitation(reduction=s.reduction, dtype=self.dtype, name='se')
    else:
      block = CBAM(
        norm=self.norm, reduction=s.reduction, kernel=s.cbam_kernel, dtype=self.dtype, name='cbam'
      )
    return block(f, train)

  def _multiscale(self, f: jax.Array, train: bool) -> jax.Array:
    s = self.options
    block = MultiScale(
      norm=self.norm,
      rates=s.aspp_rates,
      use_1x1_branch=s.aspp_1x1_branch,
      use_image_pool=s.aspp_image_pool,
      dtype=self.dtype,
      name='mus',
    )
    return block(f, train)

  @nn.compact
  def __call__(self, f: jax.Array, train: bool) -> jax.Array:
    s = self.options
    has_attention = s.attention != 'none'
    if not s.use_mus:
      return self._attention(f, train) if has_attention else f
    if not has_attention:
      return self._multiscale(f, train)
    if s.fusion == 'serial':
      return self._multiscale(self._attention(f, train), train)
    f_a, f_s = self._attention(f, train), self._multiscale(f, train)
    if s.fusion == 'add':
      return f_a + f_s
    fused = jnp.concatenate([f_a, f_s], axis=-1)
    fuse = ConvUnit(
      features=f.shape[-1], norm=self.norm, kernel_size=(1, 1), dtype=self.dtype, name='fuse'
    )
    return fuse(fused, train)
