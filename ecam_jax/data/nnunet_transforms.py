"""The transforms of nnU-Net v2's 2-D augmentation (data/nnunet_augment.py, whose
docstring gives nnU-Net's sources and numbers): spatial resampling of image and label, blur,
simulated low resolution, contrast and gamma, as pure JAX functions of one example and its
drawn values."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

# --- 1. spatial ------------------------------------------------------------------------


def spatial_coordinates(
  angle: jax.Array, scale: jax.Array, height: int, width: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(rows, cols, outside), each [H, W]: where each output pixel samples the slice, and
  whether that lies outside it (the label's test, see the module doc)."""
  cy, cx = (height - 1) / 2, (width - 1) / 2
  dy, dx = jnp.meshgrid(
    jnp.arange(height, dtype=jnp.float32) - cy,
    jnp.arange(width, dtype=jnp.float32) - cx,
    indexing='ij',
  )
  cos, sin = jnp.cos(angle) * scale, jnp.sin(angle) * scale
  off_y, off_x = cos * dy - sin * dx, sin * dy + cos * dx
  outside = (jnp.abs(off_y) > cy) | (jnp.abs(off_x) > cx)
  return off_y + cy, off_x + cx, outside


def sample_label(label: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """[H, W] int32 label at (rows, cols) as nnU-Net resamples it: the label whose bilinearly
  interpolated one-hot (times 1000, then float16) is largest, the lowest on ties; taps
  outside the slice count for no label. Only the four taps' labels can win (any other
  scores 0, and inside the slice the taps' weights sum to 1)."""
  height, width = label.shape
  r0, c0 = jnp.floor(rows), jnp.floor(cols)
  fr, fc = rows - r0, cols - c0
  r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
  taps = []
  for dr, wr in ((0, 1 - fr), (1, fr)):  # torch's order: nw, ne, sw, se
    for dc, wc in ((0, 1 - fc), (1, fc)):
      r, c = r0 + dr, c0 + dc
      inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
      value = label[jnp.clip(r, 0, height - 1), jnp.clip(c, 0, width - 1)]
      taps.append((jnp.where(inside, value, -1), jnp.where(inside, wr * wc * 1000.0, 0.0)))
  best_score = jnp.full(rows.shape, -jnp.inf, jnp.float16)
  best_label = jnp.zeros(rows.shape, jnp.int32)
  for value, _ in taps:
    score = sum(jnp.where(other == value, weight, 0.0) for other, weight in taps)
    score = jnp.where(value >= 0, score.astype(jnp.float16), -jnp.inf)
    better = (value >= 0) & ((score > best_score) | ((score == best_score) & (value < best_label)))
    best_score, best_label = jnp.maximum(score, best_score), jnp.where(better, value, best_label)
  return best_label


def spatial(
  angle: jax.Array, scale: jax.Array, image: jax.Array, label: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Rotate by `angle` (radians) and scale about the centre: image [H, W, C] bilinear with
  0 outside, label [H, W] int32 as sample_label with 0 outside."""
  height, width = label.shape
  rows, cols, outside = spatial_coordinates(angle, scale, height, width)
  resample = lambda x: jax.scipy.ndimage.map_coordinates(
    x, [rows, cols], order=1, mode='constant', cval=0.0
  )
  image = jax.vmap(resample, in_axes=-1, out_axes=-1)(image)
  return image, jnp.where(outside, 0, sample_label(label, rows, cols))


# --- 3. blur -----------------------------------------------------------------------------


def blur_radius_thresholds(max_sigma: float) -> tuple[float, ...]:
  """The smallest float32 sigmas whose nnU-Net kernel radius reaches 1, 2, ... up to that
  of `max_sigma`. The radius is floor(3 sigma + 0.25): the kernel size is
  round-to-nearest-odd(6 sigma + 0.5) (round half to even, then up to the odd neighbour
  from at or above, down from below), i.e. 2 floor((6 sigma + 0.5) / 2) + 1, with
  6 sigma + 0.5 exact in double for a float32 sigma."""
  out = []
  up, down = np.float32(np.inf), np.float32(-np.inf)
  while True:
    bound = Fraction(4 * (len(out) + 1) - 1, 12)  # 3 sigma + 0.25 >= m
    sigma = np.float32(float(bound))
    while Fraction(float(sigma)) < bound:
      sigma = np.nextafter(sigma, up)
    while Fraction(float(np.nextafter(sigma, down))) >= bound:
      sigma = np.nextafter(sigma, down)
    if sigma > np.float32(max_sigma):
      return tuple(out)
    out.append(float(sigma))


def blur_axis(x: jax.Array, sigma: jax.Array, axis: int, thresholds: tuple[float, ...]):
  """x blurred along `axis` by nnU-Net's kernel for a traced sigma: a static
  2 * len(thresholds) + 1 taps, those beyond the sigma's radius weighted 0."""
  big = len(thresholds)
  radius = sum((sigma >= t).astype(jnp.int32) for t in thresholds) if thresholds else 0
  offsets = jnp.arange(-big, big + 1, dtype=jnp.float32)
  weights = jnp.where(jnp.abs(offsets) <= radius, jnp.exp(-0.5 * (offsets / sigma) ** 2), 0.0)
  weights = weights / weights.sum()
  pad = [(0, 0)] * x.ndim
  pad[axis] = (big, big)
  padded = jnp.pad(x, pad, mode='reflect')
  n = x.shape[axis]
  return sum(
    weights[i] * jax.lax.slice_in_dim(padded, i, i + n, axis=axis) for i in range(2 * big + 1)
  )


# --- 6. low resolution -------------------------------------------------------------------


def low_resolution_size(n: int, zoom: jax.Array) -> jax.Array:
  """int32 round(n * zoom), half to even, exact for a float32 zoom in (0, 1] (as Python
  rounds the exact double product); at least 1. Integer arithmetic on the zoom's bits:
  zoom = mantissa * 2**-shift, n * mantissa split in two 32-bit halves."""
  if not 0 < n < 2**20:
    raise ValueError(f'a slice side of {n}; expected 1 .. 2**20 - 1')
  bits = jax.lax.bitcast_convert_type(jnp.asarray(zoom, jnp.float32), jnp.uint32)
  mantissa = (bits & 0x7FFFFF) | 0x800000
  shift = 150 - ((bits >> 23) & 0xFF).astype(jnp.int32)  # >= 23 for zoom <= 1
  high = jnp.uint32(n) * (mantissa >> 12)
  low = jnp.uint32(n) * (mantissa & 0xFFF)
  whole = high + (low >> 12)  # n * mantissa = whole * 2**12 + (low & 0xFFF)
  rest = low & 0xFFF
  t = shift - 12  # n * zoom = (whole + rest / 2**12) / 2**t, t >= 11
  tc = jnp.minimum(t, 31).astype(jnp.uint32)
  floor = whole >> tc
  remainder = whole & ((jnp.uint32(1) << tc) - 1)
  half = jnp.uint32(1) << (tc - 1)
  up = (remainder > half) | ((remainder == half) & ((rest > 0) | ((floor & 1) == 1)))
  size = (floor + up.astype(jnp.uint32)).astype(jnp.int32)
  return jnp.where(t > 31, 1, jnp.maximum(size, 1))  # t > 31: n * zoom < 1


def _low_resolution_taps(n: int, m: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(i0, i1, lam) [n]: resizing an axis of n to m (nearest-exact) and back (bilinear,
  align_corners=False) gives out[j] = (1 - lam) x[i0] + lam x[i1] (torch's index rules,
  in float32 as its CPU kernels)."""
  mf = m.astype(jnp.float32)
  dst = jnp.arange(n, dtype=jnp.float32)
  src = jnp.maximum((mf / n) * (dst + 0.5) - 0.5, 0.0)  # bilinear up, m -> n
  k0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), m - 1)
  lam = jnp.clip(src - k0, 0.0, 1.0)
  k1 = k0 + (k0 < m - 1)
  down = lambda k: jnp.minimum(  # nearest-exact down, n -> m: small k of m reads x[down(k)]
    jnp.floor((k.astype(jnp.float32) + 0.5) * (n / mf)).astype(jnp.int32), n - 1
  )
  return down(k0), down(k1), lam


def simulate_low_resolution(x: jax.Array, zoom: jax.Array) -> jax.Array:
  """[H, W] resized to (round(H zoom), round(W zoom)) nearest-exact and back bilinearly."""
  height, width = x.shape
  r0, r1, lr = _low_resolution_taps(height, low_resolution_size(height, zoom))
  c0, c1, lc = _low_resolution_taps(width, low_resolution_size(width, zoom))
  lr, lc = lr[:, None], lc[None, :]
  top, bottom = x[r0], x[r1]
  return (1 - lr) * ((1 - lc) * top[:, c0] + lc * top[:, c1]) + lr * (
    (1 - lc) * bottom[:, c0] + lc * bottom[:, c1]
  )


# --- 5, 7, 8. contrast and gamma ---------------------------------------------------------


def contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """[H, W, C], factor [C]: about each channel's mean, clipped to its former range."""
  mean = image.mean(axis=(0, 1))
  out = (image - mean) * factor + mean
  return jnp.clip(out, image.min(axis=(0, 1)), image.max(axis=(0, 1)))


def gamma(image: jax.Array, value: jax.Array, invert: bool) -> jax.Array:
  """[H, W, C], value [C]: per channel over its min-max range, mean and std retained."""
  eps = 1e-7
  x = -image if invert else image
  mean, std = x.mean(axis=(0, 1)), x.std(axis=(0, 1), ddof=1)
  low = x.min(axis=(0, 1))
  span = x.max(axis=(0, 1)) - low
  x = ((x - low) / jnp.maximum(span, eps)) ** value * span + low
  x = (x - x.mean(axis=(0, 1))) * (std / jnp.maximum(x.std(axis=(0, 1), ddof=1), eps)) + mean
  return -x if invert else x
