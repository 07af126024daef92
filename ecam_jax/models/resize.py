"""Bilinear resizing of NHWC maps in both of PyTorch's conventions.

The compared networks resize their coarse maps back to a finer grid bilinearly, some with
PyTorch's `align_corners=True` (UNet++ of 4uiiurz1, DeepLabV3+, DA-Net), some with the
half-pixel convention (`align_corners=False`: HRNet, SegFormer, CE-Net's RMP), which is
also `jax.image.resize(..., 'bilinear')`'s when it upsamples.
"""

import jax
import jax.numpy as jnp
import numpy as np


def source_positions(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
  """Where output pixel k = 0..n_out-1 samples the input, in input pixels (float64).

  align_corners=True: k (n_in - 1) / (n_out - 1), so the corner pixels coincide.
  False: (k + 0.5) n_in / n_out - 0.5 clamped to [0, n_in - 1] (pixel centres align).
  """
  k = np.arange(n_out, dtype=np.float64)
  if align_corners:
    return k * (n_in - 1) / max(n_out - 1, 1)
  return np.clip((k + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)


def resize_bilinear(x: jax.Array, size: tuple[int, int], align_corners: bool) -> jax.Array:
  """[B, H, W, C] -> [B, size[0], size[1], C], separable linear interpolation along H then
  W, in x's dtype. Exact for any sizes (up or down) with no antialiasing, as PyTorch's
  `F.interpolate(mode='bilinear')`."""
  for axis, n_out in zip((1, 2), size, strict=True):
    n_in = x.shape[axis]
    if n_in == n_out:  # the identity in both conventions
      continue
    pos = source_positions(n_in, n_out, align_corners)
    lo = np.floor(pos).astype(np.int32)
    hi = np.minimum(lo + 1, n_in - 1)
    shape = [1] * x.ndim
    shape[axis] = n_out
    t = jnp.asarray((pos - lo).reshape(shape), x.dtype)
    a, b = jnp.take(x, lo, axis=axis), jnp.take(x, hi, axis=axis)
    x = a + (b - a) * t
  return x
