"""DA-Net (Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019), after the
authors' `DANet` and `DANetHead` (github.com/junfu1115/DANet, encoding/models/sseg/danet.py,
with PAM_Module and CAM_Module in encoding/nn/da_att.py): a dilated ResNet whose last
feature goes through two branches, position attention (PAM, over the h*w positions) and
channel attention (CAM, over the channels), summed into the main head; each branch also
has an auxiliary head.

As built here (docs/networks/danet.md lists every departure): the backbone starts from
random weights with a 1-channel stem (the reference loads ImageNet weights into a
3-channel one), its depth is `model.resnet_depth`, its widths scale with
`model.base_channels` (64 is the reference), its output stride is `model.output_stride`,
PAM's attention runs with `model.attention_impl` (the same function as the U-Net's SC),
the auxiliary heads are `side_logits` only with `model.deep_supervision`, and dropout
draws its masks per global row.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecam_jax.models.attention import dot_product_attention
from ecam_jax.models.baselines.danet_options import DANetOptions
from ecam_jax.models.baselines.resnet import ResNet
from ecam_jax.models.dropout import Dropout
from ecam_jax.models.layers import ConvUnit, network_setup
from ecam_jax.models.resize import resize_bilinear

# output stride -> the ResNet's replace_stride_with_dilation (stages 2-4)
DILATIONS = {8: (False, True, True), 16: (False, False, True)}
HEAD_REDUCTION = 4  # DANetHead: inter = in_channels // 4 (2048 -> 512)
PAM_KEY_REDUCTION = 8  # PAM: queries and keys have inter // 8 channels (512 -> 64)


class PositionAttention(nn.Module):
  """PAM: out = gamma * sum_j softmax_j(q_i . k_j) v_j + x_i over the N = h*w positions
  (no scaling), q, k = 1x1 convs to C/8 (with bias), v = 1x1 conv C -> C (with bias),
  gamma a scalar that starts at 0. [B, h, w, C] -> [B, h, w, C]."""

  impl: str  # model.attention_impl, see attention.dot_product_attention
  chunk: int  # model.attention_chunk
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    proj = lambda features, name: nn.Conv(features, (1, 1), dtype=self.dtype, name=name)  # noqa: E731
    keys = max(1, c // PAM_KEY_REDUCTION)
    q, k = proj(keys, 'query')(x), proj(keys, 'key')(x)  # [B, h, w, C/8]
    v = proj(c, 'value')(x)  # [B, h, w, C]
    flat = lambda t: t.reshape(b, h * w, t.shape[-1])  # noqa: E731
    out = dot_product_attention(flat(q), flat(k), flat(v), 1.0, impl=self.impl, chunk=self.chunk)
    gamma = self.param('gamma', nn.initializers.zeros, (), jnp.float32)
    return (gamma * out.reshape(x.shape) + x).astype(x.dtype)


class ChannelAttention(nn.Module):
  """CAM (no convs), in float32: E = X X^T over the positions ([C, C]),
  A = softmax_d(max_d' E_cd' - E_cd) (the reference's "max minus energy"),
  out_c = gamma * sum_d A_cd X_d + X_c, gamma a scalar that starts at 0.
  [B, h, w, C] -> [B, h, w, C]."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    flat = x.reshape(b, h * w, c).astype(jnp.float32)  # X^T: [B, N, C]
    energy = jnp.einsum('bnc,bnd->bcd', flat, flat)  # [B, C, C]
    attention = jax.nn.softmax(energy.max(-1, keepdims=True) - energy, axis=-1)
    out = jnp.einsum('bcd,bnd->bnc', attention, flat).reshape(x.shape)
    gamma = self.param('gamma', nn.initializers.zeros, (), jnp.float32)
    return (gamma * out + x).astype(x.dtype)


class DANet(nn.Module):
  """Input [B, H, W, 1] (H, W multiples of `output_stride`) ->
  {'logits': [B, H, W, K], 'side_logits': (position head, channel head) or ()}.

  Backbone: ResNet-`resnet_depth` (base width `base_channels`) at `output_stride` -> c4
  (C = 2048 at the reference). Head, inter = C / 4: position branch
  sa = CBR(PAM(CBR(c4))), channel branch sc = CBR(CAM(CBR(c4))); main logits
  conv8(dropout(sa + sc)), auxiliary conv6(dropout(sa)), conv7(dropout(sc)), each a 1x1
  conv to K with bias, resized bilinearly (align_corners=True) to H x W.
  """

  options: DANetOptions
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
    s = self.options
    dtype, norm = network_setup(
      x, s, self.axis_name, f'DA-Net (a ResNet at stride {s.output_stride})'
    )
    cbr, pam, cam = ConvUnit, PositionAttention, ChannelAttention
    if s.remat:  # argument 0 is the module, so `train` is 2
      cbr, pam, cam = nn.remat(ConvUnit, static_argnums=(2,)), nn.remat(pam), nn.remat(cam)

    *_, c4 = ResNet(
      norm=norm,
      depth=s.resnet_depth,
      base_width=s.base_channels,
      replace_stride_with_dilation=DILATIONS[s.output_stride],
      dtype=dtype,
      remat=s.remat,
      name='backbone',
    )(x.astype(dtype), train)  # [B, H/OS, W/OS, C]
    inter = c4.shape[-1] // HEAD_REDUCTION

    sa = cbr(inter, norm, dtype=dtype, name='conv5a')(c4, train)  # [B, H/OS, W/OS, inter]
    sa = pam(s.attention_impl, s.attention_chunk, dtype, name='pam')(sa)
    sa = cbr(inter, norm, dtype=dtype, name='conv51')(sa, train)
    sc = cbr(inter, norm, dtype=dtype, name='conv5c')(c4, train)
    sc = cam(name='cam')(sc)
    sc = cbr(inter, norm, dtype=dtype, name='conv52')(sc, train)

    def head(features: jax.Array, name: str) -> jax.Array:
      y = Dropout(s.dropout, self.axis_name, channelwise=True, name=f'{name}_dropout')(
        features, train
      )
      y = nn.Conv(s.num_classes, (1, 1), dtype=dtype, name=name)(y)  # [B, H/OS, W/OS, K]
      return resize_bilinear(y, x.shape[1:3], align_corners=True).astype(jnp.float32)

    logits = head(sa + sc, 'conv8')
    sides = (head(sa, 'conv6'), head(sc, 'conv7')) if s.deep_supervision else ()
    return {'logits': logits, 'side_logits': sides}
