"""nnU-Net v2's 2-D augmentation on the device: simulated low resolution against torch's
resizing written in NumPy, the probabilities, the label's values, and a sharded batch
equal to one device's (the spatial and intensity transforms: test_nnunet_augment.py)."""

import functools

import jax
import jax.numpy as jnp
import nnunet_draws as d
import numpy as np
from jax.sharding import PartitionSpec as P
from nnunet_draws import ALWAYS, DEFAULT, FLAGS, B, C

from ecam_jax import parallel
from ecam_jax.data import nnunet_augment as na
from ecam_jax.data import nnunet_transforms as nt

# --- low resolution ----------------------------------------------------------------------


def _torch_nearest_exact(x, m, axis):
  """torch 'nearest-exact' to size m: source floor((j + 0.5) * (n / m)), scale in float32."""
  n = x.shape[axis]
  scale = np.float32(n) / np.float32(m)
  src = np.floor(((np.arange(m) + 0.5) * np.float64(scale)).astype(np.float32)).astype(int)
  return np.take(x, np.minimum(src, n - 1), axis=axis)


def _torch_bilinear(x, n, axis):
  """torch 'bilinear', align_corners=False, to size n along one axis (float32 indices)."""
  m = x.shape[axis]
  scale = np.float32(m) / np.float32(n)
  src = np.maximum(scale * (np.arange(n, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
  i0 = np.minimum(np.floor(src).astype(int), m - 1)
  lam = np.clip(src - i0, 0, 1).astype(np.float64)
  i1 = i0 + (i0 < m - 1)
  shape = [1] * x.ndim
  shape[axis] = n
  lam = lam.reshape(shape)
  return np.take(x, i0, axis=axis) * (1 - lam) + np.take(x, i1, axis=axis) * lam


def _low_resolution(x, zoom):
  zoom = float(np.float32(zoom))
  h, w = x.shape
  small = _torch_nearest_exact(_torch_nearest_exact(x, round(h * zoom), 0), round(w * zoom), 1)
  return _torch_bilinear(_torch_bilinear(small, h, 0), w, 1)


def test_low_resolution_size_rounds_half_to_even_exactly():
  rng = np.random.default_rng(0)
  zooms = np.concatenate([rng.uniform(0.5, 1.0, 2000), [0.65625, 0.625, 0.875, 0.5, 1.0]])
  zooms = zooms.astype(np.float32)
  sides = (1, 7, 12, 16, 33, 512)
  sizes = jax.jit(lambda z: jnp.stack([nt.low_resolution_size(n, z) for n in sides]))(zooms)
  for n, got in zip(sides, np.asarray(sizes), strict=True):
    np.testing.assert_array_equal(got, [max(round(n * float(z)), 1) for z in zooms])
  assert [round(16 * 0.65625), round(12 * 0.625)] == [10, 8]  # 10.5 -> 10, 7.5 -> 8


def test_simulate_low_resolution_equals_resizing_down_and_up():
  x = d.images(b=1, c=1)[0, ..., 0]
  zooms = np.concatenate([[0.5, 0.65625, 0.625, 0.8, 1.0], np.linspace(0.51, 0.99, 7)])
  got = jax.jit(jax.vmap(nt.simulate_low_resolution, in_axes=(None, 0)))(x, zooms)
  for z, g in zip(zooms, np.asarray(got), strict=True):
    np.testing.assert_allclose(g, _low_resolution(x.astype(np.float64), z), atol=1e-5)


def test_low_resolution_in_the_chain_per_channel():
  images, labels = d.images(), d.blobs()
  params = d.only(d.params(B, 11), 'low_resolution')
  out_i, out_l = map(np.asarray, d.apply(params, images, labels))
  np.testing.assert_array_equal(out_l, labels)
  for b in range(B):
    p = d.example(params, b)
    for c in range(C):
      x = images[b, ..., c].astype(np.float64)
      assert 0.5 <= p.low_resolution_zoom[c] <= 1.0
      want = _low_resolution(x, p.low_resolution_zoom[c]) if p.low_resolution_channel[c] else x
      np.testing.assert_allclose(out_i[b, ..., c], want, atol=1e-5)


# --- probabilities, labels, devices ------------------------------------------------------


def _close(freq, p, n):
  return abs(freq - p) <= 4.5 * np.sqrt(p * (1 - p) / n) + 1e-9


def test_probabilities_and_ranges_over_many_keys():
  n = 4000
  params = d.params(n, 12, shape=(2, 4, 4))
  s = DEFAULT
  for flag, p in (
    ('rotate', s.p_rotation),
    ('rescale', s.p_scaling),
    ('noise', s.p_noise),
    ('blur', s.p_blur),
    ('brightness', s.p_brightness),
    ('contrast', s.p_contrast),
    ('low_resolution', s.p_low_resolution),
    ('inverted_gamma', s.p_inverted_gamma),
    ('gamma', s.p_gamma),
  ):
    assert _close(float(np.mean(getattr(params, flag))), p, n), flag
  for flags in (params.blur_channel, params.low_resolution_channel, params.mirror):
    for column in np.asarray(flags).T:  # each channel (axis) on its own
      assert _close(column.mean(), 0.5, n)
  assert abs(np.corrcoef(np.asarray(params.blur_channel).T.astype(float))[0, 1]) < 0.08
  angle = np.asarray(params.angle)  # 4 x 4: +-180 degrees
  assert -np.pi <= angle.min() < -3.1 and 3.1 < angle.max() <= np.pi
  for name, (lo, hi) in (
    ('scale', s.scaling),
    ('noise_std', s.noise_std),
    ('blur_sigma', s.blur_sigma),
    ('low_resolution_zoom', s.low_resolution_zoom),
  ):
    x = np.asarray(getattr(params, name))
    assert lo <= x.min() < lo + 0.01 * (hi - lo) and hi - 0.01 * (hi - lo) < x.max() <= hi, name
  sigma = np.asarray(params.blur_sigma)  # independent per axis and channel
  assert abs(np.corrcoef(sigma[:, 0, 0], sigma[:, 0, 1])[0, 1]) < 0.08
  for name, (lo, hi) in (
    ('brightness_factor', s.brightness),
    ('contrast_factor', s.contrast),
    ('gamma_value', s.gamma),
    ('inverted_gamma_value', s.gamma),
  ):
    x = np.asarray(getattr(params, name))
    assert lo <= x.min() and x.max() <= hi, name
    assert _close((x < 1).mean(), 0.5, x.size), name  # BGContrast: half below 1
    assert x[x < 1].min() < lo + 0.01 and x[x >= 1].max() > hi - 0.01


def test_rotation_range_follows_the_aspect_ratio():
  assert DEFAULT.rotation_limit(24, 16) == 180.0  # 1.5: not above
  assert DEFAULT.rotation_limit(16, 25) == DEFAULT.rotation_limit(25, 16) == 15.0
  assert na.NnUNet2D(rotation_degrees=30).rotation_limit(16, 64) == 30.0


def test_whole_chain_keeps_integer_labels_from_the_input():
  images, labels = d.images(seed=15), d.blobs(seed=15, values=(2, 5))
  out_i, out_l = d.apply(d.only(d.params(B, 15), *FLAGS), images, labels)  # every transform
  assert out_l.dtype == np.uint8 and out_i.dtype == np.float32
  assert set(np.unique(out_l)) <= {0, 2, 5} and {2, 5} <= set(np.unique(out_l))
  assert np.isfinite(np.asarray(out_i)).all()


def test_sharded_batch_equals_one_device_and_examples_depend_on_their_key():
  """augment_batch with every probability 1 on 8 devices under shard_map equals the
  example-wise chain on one (p = 1 turns every flag on, the same uniforms drawn)."""
  images, labels, keys = d.images(seed=16), d.blobs(seed=16), d.keys(B, 16)
  one = d.apply(d.only(d.params(B, 16), *FLAGS), images, labels)
  mesh = parallel.data_mesh(jax.devices()[:8])
  sharded = jax.jit(
    jax.shard_map(
      functools.partial(na.augment_batch, settings=ALWAYS),
      mesh=mesh,
      in_specs=(P(parallel.AXIS),) * 3,
      out_specs=(P(parallel.AXIS), P(parallel.AXIS)),
    )
  )
  got = sharded(keys, images, labels)
  # float32 sums (means, stds) may be reduced in another order for 1 and 8 examples
  np.testing.assert_allclose(got[0], one[0], rtol=1e-5, atol=2e-5)
  np.testing.assert_array_equal(got[1], one[1])
  order = np.array([3, 0, 7, 5, 1, 6, 2, 4])
  shuffled = sharded(keys[order], images[order], labels[order])
  np.testing.assert_allclose(shuffled[0], np.asarray(got[0])[order], rtol=1e-5, atol=2e-5)
  np.testing.assert_array_equal(shuffled[1], np.asarray(got[1])[order])
