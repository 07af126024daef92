"""Bilinear resizing of NHWC maps in both of PyTorch's conventions.

The compared networks resize their coarse maps back to a finer grid bilinearly, some with
PyTorch's `align_corners=True` (UNet++ of 4uiiurz1, DeepLabV3+, DA-Net), some with the
half-pixel convention (`align_corners=False`: HRNet, SegFormer, CE-Net's RMP), which is
also `jax.image.resize(..., 'bilinear')`'s when it upsamples.
"""

import jax
import jax.numpy as jnp
import numpy as np

# Full float32 products on every backend (TPUs and Ampere+ GPUs otherwise round the operands
# of a float32 matmul to bfloat16 or TF32).
_EXACT = jax.lax.Precision.HIGHEST


def source_positions(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
  """Where output pixel k = 0..n_out-1 samples the input, in input pixels (float64).

  align_corners=True: k (n_in - 1) / (n_out - 1), so the corner pixels coincide.
  False: (k + 0.5) n_in / n_out - 0.5 clamped to [0, n_in - 1] (pixel centres align).
  """
  k = np.arange(n_out, dtype=np.float64)
  if align_corners:
    return k * (n_in - 1) / max(n_out - 1, 1)
  return np.clip((k + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)


def interpolation_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
  """[n_out, n_in] float64: row k holds the two weights with which output pixel k mixes
  the input pixels around `source_positions(...)[k]` (weights sum to 1)."""
  pos = source_positions(n_in, n_out, align_corners)
  lo = np.floor(pos).astype(np.int64)
  hi = np.minimum(lo + 1, n_in - 1)
  m = np.zeros((n_out, n_in))
  rows = np.arange(n_out)
  np.add.at(m, (rows, lo), 1 - (pos - lo))
  np.add.at(m, (rows, hi), pos - lo)
  return m


def resize_bilinear(x: jax.Array, size: tuple[int, int], align_corners: bool) -> jax.Array:
  """[B, H, W, C] -> [B, size[0], size[1], C], separable linear interpolation along H then
  W, in x's dtype. Exact for any sizes (up or down) with no antialiasing, as PyTorch's
  `F.interpolate(mode='bilinear')`.

  Each axis is a product with a constant interpolation matrix rather than a gather of the
  two neighbours: its gradient is the transposed product, where a gather's would be a
  scatter-add, which XLA compiles slowly at large sizes and runs slowly on accelerators.
  """
  h, w = size
  if x.shape[1] != h:  # the identity in both conventions when the size is kept
    m = jnp.asarray(interpolation_matrix(x.shape[1], h, align_corners), x.dtype)
    x = jnp.einsum('ph,bhwc->bpwc', m, x, precision=_EXACT)
  if x.shape[2] != w:
    m = jnp.asarray(interpolation_matrix(x.shape[2], w, align_corners), x.dtype)
    x = jnp.einsum('qw,bhwc->bhqc', m, x, precision=_EXACT)
  return x
