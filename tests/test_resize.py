"""Bilinear resizing (models/resize.py) against PyTorch's formulas written in NumPy
(numpy_ref.resize_bilinear) and, for half-pixel upsampling, against jax.image.resize."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecam_jax.models.resize import resize_bilinear

import numpy_ref as ref


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize(
  ('shape', 'size'),
  [
    ((2, 3, 5, 4), (6, 10)),
    ((1, 4, 4, 2), (16, 16)),
    ((1, 8, 6, 3), (12, 24)),
    ((1, 9, 7, 1), (4, 3)),
  ],
)
def test_equals_pytorchs_formulas(shape, size, align_corners):
  """x2 (UNet++), x4 (DeepLabV3+, HRNet and SegFormer heads), x8 and non-integer factors
  (DA-Net, SegFormer on non-square inputs), and a downsizing one."""
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  out = resize_bilinear(x, size, align_corners)
  assert out.shape == (shape[0], *size, shape[3]) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref.resize_bilinear(x, size, align_corners), atol=1e-5)


def test_half_pixel_upsampling_is_jax_image_resize_and_align_corners_keeps_the_corners():
  x = np.random.default_rng(1).standard_normal((2, 3, 5, 4)).astype(np.float32)
  half_pixel = resize_bilinear(x, (12, 15), align_corners=False)
  np.testing.assert_allclose(half_pixel, jax.image.resize(x, (2, 12, 15, 4), 'bilinear'), atol=1e-6)
  corners = resize_bilinear(x, (12, 15), align_corners=True)
  np.testing.assert_array_equal(corners[:, [0, -1]][:, :, [0, -1]], x[:, [0, -1]][:, :, [0, -1]])
  assert np.abs(corners - half_pixel).max() > 0.1


def test_same_size_is_the_identity_and_a_single_pixel_broadcasts():
  x = np.random.default_rng(2).standard_normal((1, 4, 6, 2)).astype(np.float32)
  for align_corners in (False, True):
    np.testing.assert_array_equal(resize_bilinear(x, (4, 6), align_corners), x)
    pooled = x[:, :1, :1]
    np.testing.assert_allclose(
      resize_bilinear(pooled, (4, 6), align_corners), np.broadcast_to(pooled, (1, 4, 6, 2))
    )


def test_bfloat16_stays_bfloat16():
  x = jnp.ones((1, 2, 2, 1), jnp.bfloat16)
  assert resize_bilinear(x, (8, 8), True).dtype == jnp.bfloat16
