"""Linear in-plane resizing by two taps per output pixel, written with array methods only,
so that the same code resizes a NumPy array on the host and, inside jit, a batch on the
device (infer.py). It equals `volumes.resize_inplane(x, size, order=1)`, i.e.
scipy.ndimage.zoom in grid mode with edge replication, to float32 rounding: output pixel
o of an axis of n -> m pixels samples the input at (o + 0.5) * n / m - 0.5, clamped to
[0, n - 1] (what edge replication gives a linear interpolation), between its two
neighbouring pixels.
"""

import numpy as np


def taps(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Resizing an axis of n pixels to m: (first pixel, second pixel, float32 weight of the
  second) for each output pixel."""
  at = np.clip((np.arange(m) + 0.5) * (n / m) - 0.5, 0, n - 1)
  first = np.floor(at).astype(np.int32)
  return first, np.minimum(first + 1, n - 1), (at - first).astype(np.float32)


def resize_linear(x, size: tuple[int, int]):
  """[B, H, W, ...] (NumPy or JAX) -> [B, *size, ...], linearly; unchanged when it is
  already that size."""
  for axis, m in zip((1, 2), size, strict=True):
    n = x.shape[axis]
    if n == m:
      continue
    first, second, weight = taps(n, m)
    weight = weight.reshape((m,) + (1,) * (x.ndim - axis - 1))
    x = x.take(first, axis=axis) * (1 - weight) + x.take(second, axis=axis) * weight
  return x
