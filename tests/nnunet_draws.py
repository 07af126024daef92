"""What the nnU-Net augmentation tests share: shapes, settings that fire every
transform, drawn parameters and the jitted chain, images and labels."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ecam_jax.data import nnunet_augment as na

H, W, C, B = 32, 24, 2, 8
DEFAULT = na.NnUNet2D()
FLAGS = (
  'rotate',
  'rescale',
  'noise',
  'blur',
  'brightness',
  'contrast',
  'low_resolution',
  'inverted_gamma',
  'gamma',
  'mirror',
)
# Every transform fires (the per-channel choices stay nnU-Net's 0.5).
ALWAYS = dataclasses.replace(
  DEFAULT,
  **{
    f.name: 1.0
    for f in dataclasses.fields(DEFAULT)
    if f.name.startswith('p_') and 'channel' not in f.name
  },
)


def keys(n, seed=0):
  return jax.random.split(jax.random.key(seed), n)


@functools.lru_cache
def sampler(settings, channels, height, width):
  sample = lambda k: na.sample_params(k, settings, channels, height, width)
  return jax.jit(jax.vmap(sample))


def params(n, seed=0, settings=DEFAULT, shape=(C, H, W)):
  return sampler(settings, *shape)(keys(n, seed))


apply = jax.jit(jax.vmap(functools.partial(na.apply_params, settings=DEFAULT)))


def only(params, *on):
  """The drawn parameters with only the transforms named in `on` firing."""
  return params._replace(**{f: jnp.full_like(getattr(params, f), f in on) for f in FLAGS})


def images(b=B, seed=0, h=H, w=W, c=C):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w]
  smooth = np.sin(yy / 3.0)[..., None] + np.cos(xx / 4.0)[..., None] * np.arange(1, c + 1)
  return (smooth + rng.normal(size=(b, h, w, c))).astype(np.float32)


def blobs(b=B, seed=0, values=(1, 2), h=H, w=W, margin=0):
  """[b, h, w, 1] uint8 labels: an ellipse of each value (later ones on top)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w]
  out = np.zeros((b, h, w), np.uint8)
  for i in range(b):
    for v in values:
      cy, cx = rng.uniform(margin + 4, h - margin - 4), rng.uniform(margin + 4, w - margin - 4)
      ry, rx = rng.uniform(3, 7), rng.uniform(3, 7)
      out[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = v
  return out[..., None]


def example(params, b):
  """Example b's drawn parameters, as NumPy."""
  return jax.tree.map(lambda x: np.asarray(x[b]), params)
