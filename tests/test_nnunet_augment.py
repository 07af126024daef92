"""nnU-Net v2's 2-D augmentation on the device: each transform against an independent
NumPy/SciPy implementation of nnU-Net's formula with the example's drawn parameters, the
probabilities, the label's values and geometry, and a sharded batch equal to one device's.

apply_params compiles once per shape: a transform is isolated by turning off the other
transforms' flags in the drawn parameters (what p=0 does), not by new settings."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage
from jax.sharding import PartitionSpec as P

from ecam_jax import parallel
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


def _keys(n, seed=0):
  return jax.random.split(jax.random.key(seed), n)


@functools.lru_cache
def _sampler(settings, channels, height, width):
  sample = lambda k: na.sample_params(k, settings, channels, height, width)
  return jax.jit(jax.vmap(sample))


def _params(n, seed=0, settings=DEFAULT, shape=(C, H, W)):
  return _sampler(settings, *shape)(_keys(n, seed))


_apply = jax.jit(jax.vmap(functools.partial(na.apply_params, settings=DEFAULT)))


def _only(params, *on):
  """The drawn parameters with only the transforms named in `on` firing."""
  return params._replace(**{f: jnp.full_like(getattr(params, f), f in on) for f in FLAGS})


def _images(b=B, seed=0, h=H, w=W, c=C):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w]
  smooth = np.sin(yy / 3.0)[..., None] + np.cos(xx / 4.0)[..., None] * np.arange(1, c + 1)
  return (smooth + rng.normal(size=(b, h, w, c))).astype(np.float32)


def _blobs(b=B, seed=0, values=(1, 2), h=H, w=W, margin=0):
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


def _np(params, b):
  return jax.tree.map(lambda x: np.asarray(x[b]), params)


# --- spatial -----------------------------------------------------------------------------


def _coordinates(angle, scale, h, w):
  """[2, h, w] (row, column) sampled by each output pixel: R(angle) S (p - c) + c."""
  affine = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * scale
  centre = np.array([(h - 1) / 2, (w - 1) / 2])[:, None, None]
  return np.einsum('ij,jhw->ihw', affine, np.mgrid[:h, :w] - centre) + centre


def _nnunet_label(label, coords):
  """spatial.py's label resampling: one-hot x 1000 bilinear (0 outside) per present label,
  float16, running maximum with strict >; then its out-of-bounds test -> -1 -> 0."""
  h, w = label.shape
  out, best = np.zeros(label.shape, np.int64), None
  for u in np.unique(label):
    onehot = (label == u).astype(np.float64) * 1000
    score = scipy.ndimage.map_coordinates(onehot, coords, order=1, mode='grid-constant')
    score = score.astype(np.float16)
    if best is None:
      best, out[:] = score, u
    else:
      out[score > best] = u
      best = np.maximum(best, score)
  # a source outside the slice's pixel centres: background (nnU-Net's -1, then 0)
  out[(coords[0] < 0) | (coords[0] > h - 1) | (coords[1] < 0) | (coords[1] > w - 1)] = 0
  return out


def test_spatial_matches_numpy_rotation_scaling_and_resampling():
  images, labels = _images(), _blobs(values=(1, 2, 3))
  params = _only(_params(B, 1), 'rotate', 'rescale')
  out_i, out_l = map(np.asarray, _apply(params, images, labels))
  ambiguous = 0
  for b in range(B):
    p = _np(params, b)
    assert abs(p.angle) <= np.pi and 0.7 <= p.scale <= 1.4
    coords = _coordinates(float(p.angle), float(p.scale), H, W)
    for c in range(C):
      want = scipy.ndimage.map_coordinates(
        images[b, ..., c].astype(np.float64), coords, order=1, mode='grid-constant', cval=0.0
      )
      np.testing.assert_allclose(out_i[b, ..., c], want, atol=2e-5)
    want = _nnunet_label(labels[b, ..., 0], coords)
    # float32 against float64 coordinates may tip a float16 tie or a bound: those pixels
    # are the ones whose reference changes under a 1e-4 pixel nudge.
    nudged = [
      _nnunet_label(labels[b, ..., 0], coords + np.array([dy, dx])[:, None, None])
      for dy in (-1e-4, 1e-4)
      for dx in (-1e-4, 1e-4)
    ]
    sure = np.all([n == want for n in nudged], axis=0)
    np.testing.assert_array_equal(out_l[b, ..., 0][sure], want[sure])
    ambiguous += (~sure).sum()
  assert ambiguous <= 0.01 * B * H * W


def test_label_takes_the_float16_argmax_lowest_label_on_ties():
  label = jnp.asarray([[1, 2], [1, 2]], jnp.int32)
  cols = jnp.asarray([0.25, 0.75, 0.5, 0.5001, 0.502], jnp.float32)[:, None]
  got = jax.jit(lambda c: na.sample_label(label, jnp.zeros_like(c), c))(cols)[:, 0]
  # 0.5: a tie, the lower label; 0.5001: 499.9 and 500.1 are both 500 in float16
  np.testing.assert_array_equal(got, [1, 2, 1, 1, 2])


def test_rotation_direction_and_scale_sense():
  images = np.zeros((B, H, W, C), np.float32)
  images[:, 16, 15] = 1.0  # offset (0.5, 3.5) from the centre (15.5, 11.5)
  labels = _blobs(values=(1,), margin=4)
  params = _only(_params(B, 2), 'rotate')._replace(angle=jnp.full((B,), np.pi / 2, jnp.float32))
  out = np.asarray(_apply(params, images, labels)[0])
  # right of the centre goes below it: clockwise as displayed (row 0 at the top)
  assert np.unravel_index(out[0, ..., 0].argmax(), (H, W)) == (19, 11)
  np.testing.assert_allclose(out[0, 19, 11], 1.0, atol=1e-5)
  # scale > 1 samples a larger area: the label's area shrinks by scale**2
  disk = np.zeros((B, H, W, 1), np.uint8)
  yy, xx = np.mgrid[:H, :W]
  disk[:, ((yy - 15.5) ** 2 + (xx - 11.5) ** 2) < 36] = 1
  for scale in (0.7, 1.4):
    params = _only(_params(B, 3), 'rescale')._replace(scale=jnp.full((B,), scale, jnp.float32))
    area = np.asarray(_apply(params, images, disk)[1]).sum() / disk.sum()
    assert abs(area * scale**2 - 1) < 0.1


def test_labels_move_with_the_image_through_spatial_and_mirroring():
  labels = _blobs(seed=4, values=(1,), margin=5)  # away from the border
  images = np.repeat(labels.astype(np.float32), C, axis=-1)
  params = _only(_params(B, 4), 'rotate', 'rescale', 'mirror')
  params = params._replace(mirror=_params(B, 4).mirror)  # as drawn
  out_i, out_l = map(np.asarray, _apply(params, images, labels))
  assert out_l.dtype == np.uint8 and set(np.unique(out_l)) <= {0, 1}
  assert not np.array_equal(out_l, labels)
  # two labels: label 1 wins exactly where its interpolated one-hot (= the image) > 0.5
  clear = np.abs(out_i[..., :1] - 0.5) > 1e-3
  np.testing.assert_array_equal(out_l[clear], (out_i[..., :1] > 0.5)[clear])
  assert clear.mean() > 0.97


def test_mirroring_flips_image_and_label_on_the_drawn_axes():
  images, labels = _images(), _blobs()
  params = _only(_params(B, 5), 'mirror')._replace(mirror=_params(B, 5).mirror)
  out_i, out_l = map(np.asarray, _apply(params, images, labels))
  for b in range(B):
    flip_rows, flip_cols = np.asarray(params.mirror[b])
    want_i, want_l = images[b], labels[b]
    if flip_rows:
      want_i, want_l = want_i[::-1], want_l[::-1]
    if flip_cols:
      want_i, want_l = want_i[:, ::-1], want_l[:, ::-1]
    np.testing.assert_array_equal(out_i[b], want_i)
    np.testing.assert_array_equal(out_l[b], want_l)


# --- intensities -------------------------------------------------------------------------


def test_noise_adds_the_drawn_std_to_every_channel_and_leaves_the_label():
  images, labels = _images(), _blobs()
  params = _only(_params(B, 6), 'noise')
  out_i, out_l = map(np.asarray, _apply(params, images, labels))
  np.testing.assert_array_equal(out_l, labels)
  for b in range(B):
    p = _np(params, b)
    assert 0.0 <= p.noise_std <= 0.1
    noise = out_i[b] - images[b]
    np.testing.assert_allclose(noise, p.noise_std * p.noise_field, atol=1e-6)
    for c in range(C):  # one std for every channel, H * W samples each
      np.testing.assert_allclose(noise[..., c].std(), p.noise_std, rtol=0.15, atol=1e-4)
    assert not np.allclose(noise[..., 0], noise[..., 1])


def _nnunet_radius(sigma):
  """Half of gaussian_blur.py's kernel size for truncate=6: 6 sigma + 0.5 rounded (half to
  even), an even result moved to the odd neighbour on the side of 6 sigma + 0.5."""
  n = 6 * sigma + 0.5
  k = round(n)
  if k % 2 == 0:
    k += 1 if n >= k else -1
  return k // 2


def test_blur_radius_follows_nnunet_kernel_size_rule():
  thresholds = na.blur_radius_thresholds(1.0)
  assert len(thresholds) == 3
  sigmas = list(np.random.default_rng(0).uniform(0.01, 1.0, 500).astype(np.float32))
  for t in thresholds:
    t = np.float32(t)
    sigmas += [t, np.nextafter(t, np.float32(0)), np.nextafter(t, np.float32(2))]
  for s in sigmas:
    assert sum(s >= t for t in thresholds) == _nnunet_radius(float(s)), s


def test_blur_matches_scipy_per_channel_and_axis():
  images, labels = _images(), _blobs()
  params = _only(_params(B, 7), 'blur')
  out_i, out_l = map(np.asarray, _apply(params, images, labels))
  np.testing.assert_array_equal(out_l, labels)
  blurred = 0
  for b in range(B):
    p = _np(params, b)
    for c in range(C):
      x = images[b, ..., c].astype(np.float64)
      if p.blur_channel[c]:
        blurred += 1
        for axis, sigma in enumerate(p.blur_sigma[c].astype(np.float64)):
          assert 0.5 <= sigma <= 1.0
          radius = _nnunet_radius(float(np.float32(sigma)))
          x = scipy.ndimage.gaussian_filter1d(x, sigma, axis=axis, mode='mirror', radius=radius)
      np.testing.assert_allclose(out_i[b, ..., c], x, atol=1e-5)
  assert 0 < blurred < B * C


def test_brightness_multiplies_each_channel_by_its_factor():
  images, labels = _images(), _blobs()
  params = _only(_params(B, 8), 'brightness')
  out_i, out_l = map(np.asarray, _apply(params, images, labels))
  factors = np.asarray(params.brightness_factor)
  assert ((factors >= 0.75) & (factors <= 1.25)).all() and not np.allclose(
    factors[:, 0], factors[:, 1]
  )
  np.testing.assert_allclose(out_i, images * factors[:, None, None, :], rtol=1e-6)
  np.testing.assert_array_equal(out_l, labels)


def test_contrast_scales_about_the_mean_within_the_former_range():
  images, labels = _images(), _blobs()
  params = _only(_params(B, 9), 'contrast')
  out_i = np.asarray(_apply(params, images, labels)[0])
  for b in range(B):
    for c in range(C):
      x, f = images[b, ..., c].astype(np.float64), float(params.contrast_factor[b, c])
      assert 0.75 <= f <= 1.25
      want = np.clip((x - x.mean()) * f + x.mean(), x.min(), x.max())
      np.testing.assert_allclose(out_i[b, ..., c], want, atol=1e-5)
      assert x.min() <= out_i[b, ..., c].min() and out_i[b, ..., c].max() <= x.max()


def _gamma(x, g, invert):
  x = -x if invert else x
  mean, std, lo, hi = x.mean(), x.std(ddof=1), x.min(), x.max()
  y = ((x - lo) / max(hi - lo, 1e-7)) ** g * (hi - lo) + lo
  y = (y - y.mean()) * (std / max(y.std(ddof=1), 1e-7)) + mean
  return -y if invert else y


def test_gamma_with_and_without_inversion_retains_mean_and_std():
  images, labels = _images(), _blobs()
  for flag, invert in (('inverted_gamma', True), ('gamma', False)):
    params = _only(_params(B, 10), flag)
    values = np.asarray(getattr(params, flag + '_value'))
    assert ((values >= 0.7) & (values <= 1.5)).all()
    out_i = np.asarray(_apply(params, images, labels)[0])
    for b in range(B):
      for c in range(C):
        x = images[b, ..., c].astype(np.float64)
        np.testing.assert_allclose(out_i[b, ..., c], _gamma(x, values[b, c], invert), atol=2e-5)
        np.testing.assert_allclose(out_i[b, ..., c].mean(), x.mean(), atol=1e-5)
        np.testing.assert_allclose(out_i[b, ..., c].std(), x.std(), rtol=1e-5)


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
  sizes = jax.jit(lambda z: jnp.stack([na.low_resolution_size(n, z) for n in sides]))(zooms)
  for n, got in zip(sides, np.asarray(sizes), strict=True):
    np.testing.assert_array_equal(got, [max(round(n * float(z)), 1) for z in zooms])
  assert [round(16 * 0.65625), round(12 * 0.625)] == [10, 8]  # 10.5 -> 10, 7.5 -> 8


def test_simulate_low_resolution_equals_resizing_down_and_up():
  x = _images(b=1, c=1)[0, ..., 0]
  zooms = np.concatenate([[0.5, 0.65625, 0.625, 0.8, 1.0], np.linspace(0.51, 0.99, 7)])
  got = jax.jit(jax.vmap(na.simulate_low_resolution, in_axes=(None, 0)))(x, zooms)
  for z, g in zip(zooms, np.asarray(got), strict=True):
    np.testing.assert_allclose(g, _low_resolution(x.astype(np.float64), z), atol=1e-5)


def test_low_resolution_in_the_chain_per_channel():
  images, labels = _images(), _blobs()
  params = _only(_params(B, 11), 'low_resolution')
  out_i, out_l = map(np.asarray, _apply(params, images, labels))
  np.testing.assert_array_equal(out_l, labels)
  for b in range(B):
    p = _np(params, b)
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
  params = _params(n, 12, shape=(2, 4, 4))
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
  images, labels = _images(seed=15), _blobs(seed=15, values=(2, 5))
  out_i, out_l = _apply(_only(_params(B, 15), *FLAGS), images, labels)  # every transform
  assert out_l.dtype == np.uint8 and out_i.dtype == np.float32
  assert set(np.unique(out_l)) <= {0, 2, 5} and {2, 5} <= set(np.unique(out_l))
  assert np.isfinite(np.asarray(out_i)).all()


def test_sharded_batch_equals_one_device_and_examples_depend_on_their_key():
  """augment_batch with every probability 1 on 8 devices under shard_map equals the
  example-wise chain on one (p = 1 turns every flag on, the same uniforms drawn)."""
  images, labels, keys = _images(seed=16), _blobs(seed=16), _keys(B, 16)
  one = _apply(_only(_params(B, 16), *FLAGS), images, labels)
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
