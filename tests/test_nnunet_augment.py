"""nnU-Net v2's 2-D augmentation on the device, spatial and intensity transforms: each
against an independent NumPy/SciPy implementation of nnU-Net's formula with the example's
drawn parameters (the low resolution, probabilities and devices:
test_nnunet_augment_chain.py).

apply_params compiles once per shape: a transform is isolated by turning off the other
transforms' flags in the drawn parameters (what p=0 does), not by new settings."""

import jax
import jax.numpy as jnp
import nnunet_draws as d
import numpy as np
import scipy.ndimage
from nnunet_draws import B, C, H, W

from ecam_jax.data import nnunet_transforms as nt

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
  images, labels = d.images(), d.blobs(values=(1, 2, 3))
  params = d.only(d.params(B, 1), 'rotate', 'rescale')
  out_i, out_l = map(np.asarray, d.apply(params, images, labels))
  ambiguous = 0
  for b in range(B):
    p = d.example(params, b)
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
  got = jax.jit(lambda c: nt.sample_label(label, jnp.zeros_like(c), c))(cols)[:, 0]
  # 0.5: a tie, the lower label; 0.5001: 499.9 and 500.1 are both 500 in float16
  np.testing.assert_array_equal(got, [1, 2, 1, 1, 2])


def test_rotation_direction_and_scale_sense():
  images = np.zeros((B, H, W, C), np.float32)
  images[:, 16, 15] = 1.0  # offset (0.5, 3.5) from the centre (15.5, 11.5)
  labels = d.blobs(values=(1,), margin=4)
  params = d.only(d.params(B, 2), 'rotate')._replace(angle=jnp.full((B,), np.pi / 2, jnp.float32))
  out = np.asarray(d.apply(params, images, labels)[0])
  # right of the centre goes below it: clockwise as displayed (row 0 at the top)
  assert np.unravel_index(out[0, ..., 0].argmax(), (H, W)) == (19, 11)
  np.testing.assert_allclose(out[0, 19, 11], 1.0, atol=1e-5)
  # scale > 1 samples a larger area: the label's area shrinks by scale**2
  disk = np.zeros((B, H, W, 1), np.uint8)
  yy, xx = np.mgrid[:H, :W]
  disk[:, ((yy - 15.5) ** 2 + (xx - 11.5) ** 2) < 36] = 1
  for scale in (0.7, 1.4):
    params = d.only(d.params(B, 3), 'rescale')._replace(scale=jnp.full((B,), scale, jnp.float32))
    area = np.asarray(d.apply(params, images, disk)[1]).sum() / disk.sum()
    assert abs(area * scale**2 - 1) < 0.1


def test_labels_move_with_the_image_through_spatial_and_mirroring():
  labels = d.blobs(seed=4, values=(1,), margin=5)  # away from the border
  images = np.repeat(labels.astype(np.float32), C, axis=-1)
  params = d.only(d.params(B, 4), 'rotate', 'rescale', 'mirror')
  params = params._replace(mirror=d.params(B, 4).mirror)  # as drawn
  out_i, out_l = map(np.asarray, d.apply(params, images, labels))
  assert out_l.dtype == np.uint8 and set(np.unique(out_l)) <= {0, 1}
  assert not np.array_equal(out_l, labels)
  # two labels: label 1 wins exactly where its interpolated one-hot (= the image) > 0.5
  clear = np.abs(out_i[..., :1] - 0.5) > 1e-3
  np.testing.assert_array_equal(out_l[clear], (out_i[..., :1] > 0.5)[clear])
  assert clear.mean() > 0.97


def test_mirroring_flips_image_and_label_on_the_drawn_axes():
  images, labels = d.images(), d.blobs()
  params = d.only(d.params(B, 5), 'mirror')._replace(mirror=d.params(B, 5).mirror)
  out_i, out_l = map(np.asarray, d.apply(params, images, labels))
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
  images, labels = d.images(), d.blobs()
  params = d.only(d.params(B, 6), 'noise')
  out_i, out_l = map(np.asarray, d.apply(params, images, labels))
  np.testing.assert_array_equal(out_l, labels)
  for b in range(B):
    p = d.example(params, b)
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
  thresholds = nt.blur_radius_thresholds(1.0)
  assert len(thresholds) == 3
  sigmas = list(np.random.default_rng(0).uniform(0.01, 1.0, 500).astype(np.float32))
  for t in thresholds:
    t = np.float32(t)
    sigmas += [t, np.nextafter(t, np.float32(0)), np.nextafter(t, np.float32(2))]
  for s in sigmas:
    assert sum(s >= t for t in thresholds) == _nnunet_radius(float(s)), s


def test_blur_matches_scipy_per_channel_and_axis():
  images, labels = d.images(), d.blobs()
  params = d.only(d.params(B, 7), 'blur')
  out_i, out_l = map(np.asarray, d.apply(params, images, labels))
  np.testing.assert_array_equal(out_l, labels)
  blurred = 0
  for b in range(B):
    p = d.example(params, b)
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
  images, labels = d.images(), d.blobs()
  params = d.only(d.params(B, 8), 'brightness')
  out_i, out_l = map(np.asarray, d.apply(params, images, labels))
  factors = np.asarray(params.brightness_factor)
  assert ((factors >= 0.75) & (factors <= 1.25)).all() and not np.allclose(
    factors[:, 0], factors[:, 1]
  )
  np.testing.assert_allclose(out_i, images * factors[:, None, None, :], rtol=1e-6)
  np.testing.assert_array_equal(out_l, labels)


def test_contrast_scales_about_the_mean_within_the_former_range():
  images, labels = d.images(), d.blobs()
  params = d.only(d.params(B, 9), 'contrast')
  out_i = np.asarray(d.apply(params, images, labels)[0])
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
  images, labels = d.images(), d.blobs()
  for flag, invert in (('inverted_gamma', True), ('gamma', False)):
    params = d.only(d.params(B, 10), flag)
    values = np.asarray(getattr(params, flag + '_value'))
    assert ((values >= 0.7) & (values <= 1.5)).all()
    out_i = np.asarray(d.apply(params, images, labels)[0])
    for b in range(B):
      for c in range(C):
        x = images[b, ..., c].astype(np.float64)
        np.testing.assert_allclose(out_i[b, ..., c], _gamma(x, values[b, c], invert), atol=2e-5)
        np.testing.assert_allclose(out_i[b, ..., c].mean(), x.mean(), atol=1e-5)
        np.testing.assert_allclose(out_i[b, ..., c].std(), x.std(), rtol=1e-5)
