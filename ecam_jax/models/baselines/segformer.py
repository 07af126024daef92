"""SegFormer (Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation
with Transformers", NeurIPS 2021), after the authors' code (github.com/NVlabs/SegFormer,
mmseg/models/backbones/mix_transformer.py and decode_heads/segformer_head.py): the Mix
Transformer encoder (overlapping patch embeddings, efficient self-attention whose keys and
values come from a map shrunk by a strided conv, Mix-FFN with a depthwise 3x3 conv) and
the all-MLP decoder that fuses its four stages at stride 4.

As built here (docs/networks/segformer.md lists every departure): MiT-B2 or B0 from
`model.size`, from random weights with a 1-channel patch embedding (the
reference loads ImageNet weights into a 3-channel one); tokens stay maps [B, h, w, C]
throughout, so any input whose sides are multiples of 32 works, square or not; the
decoder's dropout is drawn per row of the global batch (models/dropout.py); the head
returns logits at the input's size. The encoder keeps the reference's initialization,
the decoder Flax's defaults.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ecam_jax.models.baselines.segformer_options import SIZES, SegFormerOptions
from ecam_jax.models.dropout import Dropout, DropPath
from ecam_jax.models.layers import ModuleDef, network_setup
from ecam_jax.models.resize import resize_bilinear

HEADS = (1, 2, 5, 8)  # attention heads per stage (every MiT size)
REDUCTIONS = (8, 4, 2, 1)  # sr: the keys' and values' map is the stage's shrunk this much
MLP_RATIO = 4  # Mix-FFN's hidden width / the stage width
# Patch embeddings (kernel, stride, padding): stage 1 overlaps 7x7 at stride 4, later 3x3/2.
PATCH_EMBEDS = ((7, 4, 3), (3, 2, 1), (3, 2, 1), (3, 2, 1))
PATCH_EPS, SR_EPS, BLOCK_EPS = 1e-5, 1e-5, 1e-6  # LayerNorm epsilons (nn.LayerNorm's 1e-5)

# The reference's init (MiT._init_weights): Linear weights trunc_normal(std 0.02), which
# truncates at +-2 absolute, i.e. never at this std; biases 0; LayerNorm scale 1, shift 0.
LINEAR_INIT = nn.initializers.normal(0.02)


def conv_init(kernel: int, features: int, groups: int = 1) -> Any:
  """The reference's conv init: N(0, sqrt(2 / fan_out)), fan_out = k * k * features / groups."""
  return nn.initializers.normal(math.sqrt(2.0 / (kernel * kernel * features // groups)))


def layer_norm(epsilon: float, dtype: Any, name: str) -> nn.LayerNorm:
  """LayerNorm over channels with statistics in float32 and two-pass variance (PyTorch's)."""
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, use_fast_variance=False, name=name)


class EfficientSelfAttention(nn.Module):
  """Multi-head attention of a map's pixels over a map shrunk `reduction` times per side:
  [B, h, w, C] -> [B, h, w, C].

  q = Linear(x); with reduction r > 1 the keys' map is LayerNorm(Conv(k=r, stride=r)(x))
  [B, h/r, w/r, C], else x; [k, v] = Linear(C -> 2C) of it (the first C outputs are keys,
  then split into heads); out = Linear(concat_heads(softmax(q k^T / sqrt(d)) v)).
  The logits and the softmax are float32.
  """

  heads: int
  reduction: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    head_dim = c // self.heads
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, kernel_init=LINEAR_INIT, name=name)  # noqa: E731
    q = dense(c, 'q')(x).reshape(b, h * w, self.heads, head_dim)
    kv_map = x
    if self.reduction > 1:
      r = self.reduction
      kv_map = nn.Conv(
        c,
        (r, r),
        strides=r,
        padding='VALID',
        dtype=self.dtype,
        kernel_init=conv_init(r, c),
        name='sr',
      )(x)  # [B, h/r, w/r, C]
      kv_map = layer_norm(SR_EPS, self.dtype, 'norm')(kv_map)
    kv = dense(2 * c, 'kv')(kv_map).reshape(b, -1, 2, self.heads, head_dim)
    k, v = kv[:, :, 0], kv[:, :, 1]  # [B, n, heads, d]
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits * head_dim**-0.5, axis=-1).astype(self.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, h, w, c)
    return dense(c, 'proj')(out)


class MixFFN(nn.Module):
  """Linear(C -> hidden) -> depthwise 3x3 conv (bias, padding 1) -> exact GELU ->
  Linear(hidden -> C): [B, h, w, C] -> [B, h, w, C]."""

  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    y = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=LINEAR_INIT, name='fc1')(x)
    y = nn.Conv(
      self.hidden,
      (3, 3),
      padding=((1, 1), (1, 1)),
      feature_group_count=self.hidden,
      dtype=self.dtype,
      kernel_init=conv_init(3, self.hidden, self.hidden),
      name='dwconv',
    )(y)
    y = nn.gelu(y, approximate=False)
    return nn.Dense(c, dtype=self.dtype, kernel_init=LINEAR_INIT, name='fc2')(y)


class Block(nn.Module):
  """x + DropPath(Attn(LN(x))), then x + DropPath(MixFFN(LN(x))): [B, h, w, C] -> same."""

  heads: int
  reduction: int
  drop_path: float
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = x.shape[-1]
    drop_path = DropPath(self.drop_path, self.axis_name, name='drop_path')
    attn = EfficientSelfAttention(self.heads, self.reduction, self.dtype, name='attn')
    x = x + drop_path(attn(layer_norm(BLOCK_EPS, self.dtype, 'norm1')(x)), train)
    mlp = MixFFN(MLP_RATIO * c, self.dtype, name='mlp')
    return x + drop_path(mlp(layer_norm(BLOCK_EPS, self.dtype, 'norm2')(x)), train)


class MixTransformer(nn.Module):
  """MiT encoder: [B, H, W, 1] -> four maps [B, H/4, W/4, C1] ... [B, H/32, W/32, C4].

  Stage i: patch embedding conv (with bias) + LayerNorm, depths[i] Blocks, LayerNorm.
  Drop-path rates rise linearly from 0 to `drop_path` over all blocks of all stages.
  """

  widths: tuple[int, ...]
  depths: tuple[int, ...]
  drop_path: float
  axis_name: str | None = None
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, ...]:
    block = nn.remat(Block, static_argnums=(2,)) if self.remat else Block  # 2: train
    rates = np.linspace(0.0, self.drop_path, sum(self.depths))  # torch.linspace's values
    features, first = [], 0
    stages = zip(self.widths, self.depths, HEADS, REDUCTIONS, PATCH_EMBEDS, strict=True)
    for i, (width, depth, heads, reduction, (k, stride, pad)) in enumerate(stages, start=1):
      x = nn.Conv(
        width,
        (k, k),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        dtype=self.dtype,
        kernel_init=conv_init(k, width),
        name=f'patch_embed{i}',
      )(x)  # [B, H / 2^(i+1), W / 2^(i+1), width]
      x = layer_norm(PATCH_EPS, self.dtype, f'patch_norm{i}')(x)
      for j in range(depth):
        x = block(
          heads,
          reduction,
          float(rates[first + j]),
          self.axis_name,
          self.dtype,
          name=f'block{i}_{j}',
        )(x, train)
      first += depth
      x = layer_norm(BLOCK_EPS, self.dtype, f'norm{i}')(x)
      features.append(x)
    return tuple(features)


class AllMLPDecoder(nn.Module):
  """SegFormerHead: [c1..c4] at strides 4-32 -> [B, H/4, W/4, K] logits.

  Each c_i -> Linear(C_i -> E) -> bilinear (half-pixel, PyTorch's align_corners=False) to
  c1's grid; concat [c4, c3, c2, c1] (4E) -> 1x1 conv 4E -> E (no bias) + BatchNorm + ReLU
  -> channel dropout (PyTorch's Dropout2d) -> 1x1 conv E -> K (bias).
  """

  embed_dim: int
  num_classes: int
  norm: ModuleDef
  dropout: float
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: tuple[jax.Array, ...], train: bool) -> jax.Array:
    grid = features[0].shape[1:3]  # (H/4, W/4)
    maps = [
      resize_bilinear(
        nn.Dense(self.embed_dim, dtype=self.dtype, name=f'linear_c{i}')(c), grid, False
      )
      for i, c in enumerate(features, start=1)
    ]  # 4 x [B, H/4, W/4, E]
    x = jnp.concatenate(maps[::-1], axis=-1)  # [c4, c3, c2, c1]: [B, H/4, W/4, 4E]
    x = nn.Conv(self.embed_dim, (1, 1), use_bias=False, dtype=self.dtype, name='linear_fuse')(x)
    x = nn.relu(self.norm(use_running_average=not train, name='linear_fuse_bn')(x))
    x = Dropout(self.dropout, self.axis_name, channelwise=True, name='dropout')(x, train)
    return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name='linear_pred')(x)


class SegFormer(nn.Module):
  """Input [B, H, W, 1] (H, W multiples of 32) -> {'logits': [B, H, W, K], 'side_logits': ()}.

  MiT-`size` encoder -> c1..c4 (strides 4, 8, 16, 32) -> all-MLP decoder at
  stride 4 -> logits resized bilinearly (half-pixel) to H x W in float32.
  """

  options: SegFormerOptions
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
    s = self.options
    dtype, norm = network_setup(
      x, s, self.axis_name, 'SegFormer (stride 32, and each stage divisible by its sr)'
    )
    widths, depths, embed_dim = SIZES[s.size]
    features = MixTransformer(
      widths, depths, s.drop_path, self.axis_name, dtype, s.remat, name='encoder'
    )(x.astype(dtype), train)
    logits = AllMLPDecoder(
      embed_dim, s.num_classes, norm, s.dropout, self.axis_name, dtype, name='decoder'
    )(features, train)  # [B, H/4, W/4, K]
    logits = resize_bilinear(logits.astype(jnp.float32), x.shape[1:3], False)
    return {'logits': logits, 'side_logits': ()}
