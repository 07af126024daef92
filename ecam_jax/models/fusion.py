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


class Bottleneck(nn.Module):
  norm: ModuleDef
  attention: str = 'coa'  # 'coa' | 'se' | 'cbam' | 'none'
  use_cc: bool = True
  use_sc: bool = True
  use_mus: bool = True
  fusion: str = 'conv'
  attention_scale: float | str = 1.0
  attention_impl: str = 'fused'
  cc_hidden: int = 1
  aspp_rates: tuple[int, ...] = (6, 12, 18)
  aspp_1x1_branch: bool = False
  aspp_image_pool: bool = False
  reduction: int = 16
  cbam_kernel: int = 7
  dtype: Any = jnp.float32

  def _attention(self, f: jax.Array, train: bool) -> jax.Array:
    if self.attention == 'coa':
      block = CollaborativeAttention(
        self.norm,
        self.use_cc,
        self.use_sc,
        self.attention_scale,
        self.attention_impl,
        self.cc_hidden,
        self.dtype,
        name='coa',
      )
    elif self.attention == 'se':
      block = SqueezeExcitation(self.reduction, self.dtype, name='se')
    else:
      block = CBAM(self.norm, self.reduction, self.cbam_kernel, self.dtype, name='cbam')
    return block(f, train)

  def _multiscale(self, f: jax.Array, train: bool) -> jax.Array:
    block = MultiScale(
      self.norm,
      self.aspp_rates,
      self.aspp_1x1_branch,
      self.aspp_image_pool,
      self.dtype,
      name='mus',
    )
    return block(f, train)

  @nn.compact
  def __call__(self, f: jax.Array, train: bool) -> jax.Array:
    has_attention = self.attention != 'none'
    if not self.use_mus:
      return self._attention(f, train) if has_attention else f
    if not has_attention:
      return self._multiscale(f, train)
    if self.fusion == 'serial':
      return self._multiscale(self._attention(f, train), train)
    f_a, f_s = self._attention(f, train), self._multiscale(f, train)
    if self.fusion == 'add':
      return f_a + f_s
    fused = jnp.concatenate([f_a, f_s], axis=-1)
    return ConvUnit(f.shape[-1], self.norm, (1, 1), dtype=self.dtype, name='fuse')(fused, train)
