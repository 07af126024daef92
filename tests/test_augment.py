"""On-device augmentation: exact flips, rotation and blur against SciPy, one geometry for
image and label, per-example keys, and the configured probabilities."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from ecam_jax.data import augment

import nifti_fixtures as fx


def _aug(**overrides):
  aug = fx.config().augment
  for key, value in overrides.items():
    aug[key] = value
  return aug


def _batch(b=4, h=24, w=32, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(b, h, w, 1)).astype(np.float32)
  yy, xx = np.mgrid[:h, :w]
  labels = np.stack([((yy - h / 2 - i) ** 2 / 40 + (xx - w / 3) ** 2 / 90 < 1) for i in range(b)])
  return images, labels[..., None].astype(np.uint8)


def _keys(n, seed=0):
  return jax.random.split(jax.random.key(seed), n)


@functools.lru_cache
def _jitted(settings):
  return jax.jit(functools.partial(augment.augment_batch, aug=_aug(**dict(settings))))


def _run(keys, images, labels, **settings):
  """augment_batch as the train step runs it: jitted (once per settings and shape)."""
  return _jitted(tuple(sorted(settings.items())))(keys, images, labels)


def _params(keys, **settings):
  aug = _aug(**settings)
  return jax.jit(jax.vmap(lambda k: augment.sample_params(k, aug)))(keys)


def test_flip_is_an_exact_mirror_of_image_and_label():
  images, labels = _batch()
  out_i, out_l = _run(_keys(4), images, labels, flip_prob=1.0, rotate_degrees=0.0, blur_prob=0.0)
  np.testing.assert_array_equal(out_i, images[:, :, ::-1])
  np.testing.assert_array_equal(out_l, labels[:, :, ::-1])
  assert out_l.dtype == np.uint8
  same_i, same_l = _run(_keys(4), images, labels, flip_prob=0.0, rotate_degrees=0.0, blur_prob=0.0)
  np.testing.assert_array_equal(same_i, images)
  np.testing.assert_array_equal(same_l, labels)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_rotation_and_flip_match_scipy(seed):
  images, labels = _batch(seed=seed)
  out_i, out_l = _run(_keys(4, seed), images, labels, blur_prob=0.0)
  params = _params(_keys(4, seed), blur_prob=0.0)
  for b in range(4):
    angle = float(params.angle[b])
    assert -10 <= angle <= 10
    image, label = images[b, ..., 0].astype(np.float64), labels[b, ..., 0]
    if params.flip[b]:
      image, label = image[:, ::-1], label[:, ::-1]
    want_i = scipy.ndimage.rotate(image, angle, reshape=False, order=1, mode='nearest')
    want_l = scipy.ndimage.rotate(label, angle, reshape=False, order=0, mode='grid-constant')
    np.testing.assert_allclose(out_i[b, ..., 0], want_i, atol=1e-4)
    np.testing.assert_array_equal(out_l[b, ..., 0], want_l)


def test_image_and_label_get_the_same_geometric_transform():
  rng = np.random.default_rng(5)
  yy, xx = np.mgrid[:40, :40]
  labels = np.stack(
    [  # ellipses away from the border, where image and label padding differ
      ((yy - rng.uniform(15, 25)) / rng.uniform(4, 9)) ** 2
      + ((xx - rng.uniform(15, 25)) / rng.uniform(4, 9)) ** 2
      < 1
      for _ in range(16)
    ]
  )[..., None].astype(np.uint8)
  images = labels.astype(np.float32)  # an image shaped like its label
  out_i, out_l = _run(_keys(16, 7), images, labels, blur_prob=0.0)
  out_i, out_l = np.asarray(out_i), np.asarray(out_l)
  assert not np.array_equal(out_l, labels)  # something happened
  inside, outside = out_i > 1 - 1e-4, out_i < 1e-4
  assert (out_l[inside] == 1).all() and (out_l[outside] == 0).all()
  # Where bilinear interpolation is undecided (edges), nearest picks a side: > 97 % agree.
  assert ((out_i > 0.5) == (out_l == 1)).mean() > 0.97


def test_blur_matches_scipy_gaussian_filter():
  image = np.random.default_rng(0).normal(size=(20, 30)).astype(np.float32)
  radius = augment.blur_radius(2.0)
  for sigma in (0.3, 1.0, 2.0):
    got = augment.gaussian_blur(jnp.asarray(image), jnp.float32(sigma), radius)
    want = scipy.ndimage.gaussian_filter(
      image.astype(np.float64), sigma, mode='nearest', radius=radius
    )
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_blur_touches_the_image_only():
  images, labels = _batch()
  out_i, out_l = _run(_keys(4), images, labels, flip_prob=0.0, rotate_degrees=0.0, blur_prob=1.0)
  np.testing.assert_array_equal(out_l, labels)
  assert np.abs(np.asarray(out_i) - images).max() > 0.1
  assert np.asarray(out_i).std() < images.std()  # smoother


def test_each_example_depends_only_on_its_key():
  images, labels = _batch(b=6)
  keys = _keys(6, 3)
  out = _run(keys, images, labels)
  order = np.array([3, 0, 5, 1, 4, 2])
  shuffled = _run(keys[order], images[order], labels[order])
  np.testing.assert_allclose(shuffled[0], out[0][order], atol=1e-6)
  np.testing.assert_array_equal(shuffled[1], out[1][order])


def test_probabilities_and_ranges_over_many_keys():
  params = _params(_keys(4000, 11), flip_prob=0.5, blur_prob=0.3, blur_sigma=(0.5, 1.5))
  assert abs(float(params.flip.mean()) - 0.5) < 0.03
  assert abs(float(params.blur.mean()) - 0.3) < 0.03
  angle, sigma = np.asarray(params.angle), np.asarray(params.sigma)
  assert -10 <= angle.min() < -9.5 and 9.5 < angle.max() <= 10 and abs(angle.mean()) < 0.4
  assert 0.5 <= sigma.min() < 0.55 and 1.45 < sigma.max() <= 1.5
