"""Augmentation as pure JAX functions of (keys, images, labels): it runs on the accelerator
inside the jitted train step, so the host only reads slices.

Per example, in this order: a horizontal flip (mirror of the columns) with probability
aug.flip_prob; a rotation by an angle uniform in [-aug.rotate_degrees, aug.rotate_degrees]
about the image centre, counter-clockwise as displayed (row 0 at the top) for positive
angles, as scipy.ndimage.rotate; and, on the image only, a Gaussian blur with probability
aug.blur_prob and sigma uniform in aug.blur_sigma (pixels). Image and label go through the
same flip and the same sampling grid: the image bilinearly with the edge replicated, the
label by nearest neighbour with 0 (background) outside. Every channel of an image moves
with the others (flip, rotation); the blur, which changes intensities, is drawn for each
channel on its own.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections


class AugmentParams(NamedTuple):
  """What one example's key draws: scalars and [C] per channel (a batch: [B], [B, C])."""

  flip: jax.Array  # bool
  angle: jax.Array  # float32, degrees
  blur: jax.Array  # bool [C]
  sigma: jax.Array  # float32 [C], pixels


def sample_params(
  key: jax.Array, aug: ml_collections.ConfigDict, channels: int = 1
) -> AugmentParams:
  """The augmentation one example of `channels` channels gets from its own key (the first
  channel's draws are the same whatever the count)."""
  k_flip, k_angle, k_blur, k_sigma = jax.random.split(key, 4)
  lo, hi = aug.blur_sigma
  return AugmentParams(
    flip=jax.random.bernoulli(k_flip, aug.flip_prob),
    angle=jax.random.uniform(k_angle, (), jnp.float32, -aug.rotate_degrees, aug.rotate_degrees),
    blur=jax.random.bernoulli(k_blur, aug.blur_prob, (channels,)),
    sigma=jax.random.uniform(k_sigma, (channels,), jnp.float32, lo, hi),
  )


def rotation_coordinates(angle: jax.Array, height: int, width: int) -> jax.Array:
  """[2, H, W] (row, column) in the input that each output pixel samples."""
  theta = jnp.deg2rad(angle)
  cy, cx = (height - 1) / 2, (width - 1) / 2
  dy, dx = jnp.meshgrid(
    jnp.arange(height, dtype=jnp.float32) - cy,
    jnp.arange(width, dtype=jnp.float32) - cx,
    indexing='ij',
  )
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  return jnp.stack([cy + cos * dy + sin * dx, cx + cos * dx - sin * dy])


def blur_radius(max_sigma: float) -> int:
  """The static kernel half-width: 4 sigma, as scipy.ndimage.gaussian_filter's default."""
  return max(1, int(4.0 * max_sigma + 0.5))


def gaussian_blur(image: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
  """[H, W] separable Gaussian of a traced sigma with a static kernel of 2 * radius + 1 taps."""
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * (x / sigma) ** 2)
  weights = weights / weights.sum()
  height, width = image.shape
  padded = jnp.pad(image, radius, mode='edge')  # [H + 2r, W + 2r]
  rows = sum(weights[i] * padded[i : i + height] for i in range(2 * radius + 1))
  return sum(weights[i] * rows[:, i : i + width] for i in range(2 * radius + 1))


def apply_params(
  params: AugmentParams, image: jax.Array, label: jax.Array, radius: int
) -> tuple[jax.Array, jax.Array]:
  """One example: image float32 [H, W, C], label [H, W, 1] (dtypes kept)."""
  lab = label[..., 0].astype(jnp.float32)  # [H, W]
  lab = jnp.where(params.flip, lab[:, ::-1], lab)
  coords = rotation_coordinates(params.angle, *lab.shape)
  lab = jax.scipy.ndimage.map_coordinates(lab, coords, order=0, mode='constant', cval=0.0)

  def channel(img: jax.Array, blur: jax.Array, sigma: jax.Array) -> jax.Array:  # [H, W]
    img = jnp.where(params.flip, img[:, ::-1], img)
    img = jax.scipy.ndimage.map_coordinates(img, coords, order=1, mode='nearest')
    return jnp.where(blur, gaussian_blur(img, sigma, radius), img)

  channels = [
    channel(image[..., c], params.blur[c], params.sigma[c]) for c in range(image.shape[-1])
  ]
  return jnp.stack(channels, axis=-1).astype(image.dtype), jnp.round(lab)[..., None].astype(
    label.dtype
  )


def augment_batch(
  keys: jax.Array, images: jax.Array, labels: jax.Array, aug: ml_collections.ConfigDict
) -> tuple[jax.Array, jax.Array]:
  """keys [B] (jax.random.key), images float32 [B, H, W, C], labels [B, H, W, 1].

  Jittable and vmapped: an example's result depends only on its own key.
  """
  radius = blur_radius(max(aug.blur_sigma))
  channels = images.shape[-1]

  def one(key, image, label):
    return apply_params(sample_params(key, aug, channels), image, label, radius)

  return jax.vmap(one)(keys, images, labels)
