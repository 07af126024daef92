"""nnU-Net v2's 2-D training augmentation as pure JAX functions of (keys, images, labels),
run on the accelerator inside the jitted train step like augment.py.

Sources: nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py (get_training_transforms,
configure_rotation_dummyDA_mirroring_and_inital_patch_size) at MIC-DKFZ/nnUNet 0e49508 and
the batchgeneratorsv2 transforms it builds, at MIC-DKFZ/batchgeneratorsv2 3cb4f07 (paths
below are under batchgeneratorsv2/transforms/). Per example, in this order, each firing
with its own probability (RandomTransform: one draw per sample, utils/random.py:16):

1. spatial (spatial/spatial.py): rotation with p 0.2, angle uniform in +-180 degrees, or
   +-15 degrees when the slice's longer side exceeds 1.5 times the shorter
   (nnUNetTrainer.py:482-485); scaling with p 0.2, one factor uniform in 0.7-1.4 for both
   axes (p_synchronize_scaling_across_axes=1; spatial.py:135-137). One sampling grid about
   the slice centre: output pixel p samples the input at R(angle) S (p - c) + c with
   c = (size - 1) / 2, R = [[cos, -sin], [sin, cos]] over (row, column) and S = scale * I
   (spatial.py:402-412, 415-429, the grid times affine.T, 221-225), so a positive angle
   turns the content clockwise as displayed (row 0 at the top) and a scale above 1 samples
   a larger area: objects get smaller (zoom out; "larger numbers = smaller objects",
   spatial.py:64). No elastic deformation. Image: bilinear (grid_sample's default mode,
   spatial.py:35; nnU-Net passes no mode), each of the four taps outside the slice
   reading 0 (padding 'zeros', spatial.py:36). Label (bg_style_seg_sampling=False,
   spatial.py:333-362): every label present is interpolated bilinearly as a one-hot image
   scaled by 1000, the result rounded to float16, and the pixel takes the label of the
   largest, the lowest label on ties; pixels whose source lies outside the slice get -1
   (spatial.py:110-118, 364-366), which RemoveLabelTansform(-1, 0)
   (nnUNetTrainer.py:845-847) makes 0 = background, written here as 0 directly.
   Outside means a source outside [0, H - 1] x [0, W - 1]. (nnU-Net's own test compares its
   normalized (column, row) grid with bounds from (height, width), which swaps the sizes: on
   a non-square slice it drops label pixels within a fraction of a pixel of the longer
   side. Not copied; on the square slices this project trains on, the two agree.)
   Neither drawn: the slice unchanged (nnU-Net crops without resampling, spatial.py:249).
2. Gaussian noise (intensity/gaussian_noise.py): p 0.1; every channel (p_per_channel 1)
   with the same drawn value (synchronize_channels=True) and its own noise. The value is
   drawn uniform in 0-0.1 as `noise_variance` but used as the standard deviation
   (gaussian_noise.py:32, 67), so here noise_std = (0, 0.1).
3. Gaussian blur (noise/gaussian_blur.py): p 0.2; each channel with p 0.5; a sigma
   uniform in 0.5-1 for each channel and each axis (synchronize_channels and
   synchronize_axes False, gaussian_blur.py:111-115); axis 0 then axis 1, a normalized
   Gaussian on integer offsets up to radius floor(3 sigma + 0.25) (kernel size
   _round_to_nearest_odd(6 sigma + 0.5) = 2 floor((6 sigma + 0.5) / 2) + 1, truncate=6
   from blur_dimension's default, gaussian_blur.py:14, 179-201), the slice padded by
   reflection without repeating the edge (torch 'reflect', gaussian_blur.py:64).
4. multiplicative brightness (intensity/brightness.py): p 0.15; each channel its own
   factor.
5. contrast (intensity/contrast.py:63-81): p 0.15; each channel its own factor; x ->
   (x - mean) * factor + mean, clipped to the channel's min and max before (range
   preserved).
   Brightness, contrast and both gammas draw with BGContrast (contrast.py:8-20): with
   probability 0.5 uniform in (lo, 1), else uniform in (1, hi): 0.75-1.25 and 0.7-1.5.
6. simulate low resolution (spatial/low_resolution.py:32-62): p 0.25; each channel with
   p 0.5 and its own zoom uniform in 0.5-1, the same for both axes
   (synchronize_axes=True); down with torch 'nearest-exact' to round(size * zoom) (Python
   round: half to even; the zoom as float32, torch.Tensor) and back up with torch
   'bilinear', align_corners=False (low_resolution.py:26-30, 59-61). The down size
   depends on a traced zoom, so both resamplings are written as index arithmetic on the
   full-size slice: the composition gathers the nearest-exact source of each bilinear
   tap, equal to resizing to that size and back.
7. gamma on the inverted image (intensity/gamma.py:54-103): p 0.1; each channel its own
   gamma; x -> -x, then with the channel's mean and (unbiased) std kept, its min-max
   range mapped to [0, 1], raised to gamma and mapped back, then shifted and scaled
   back to the kept mean and std ("retain stats", p_retain_stats=1), then negated back.
8. gamma: p 0.3, the same without the inversion.
9. mirroring (spatial/mirroring.py:13-23): each axis with p 0.5, image and label.

Differences from nnU-Net (see also each function):
- The patch is the whole slice. nnU-Net's loader reads a larger patch
  (get_patch_size: the patch rotated by up to the rotation range, capped at 90 degrees,
  divided by 0.85) and SpatialTransform resamples the patch from its centre, so rotated
  corners and zoomed-out borders mostly show real image; here they read 0 (image) and
  background (label). Foreground-centred patch sampling is the data pipeline's business.
- Rounding: coordinates, bilinear weights and sums in float32 by XLA, not torch's
  operation order; the low-resolution size and the blur radius are decided exactly as
  nnU-Net's double arithmetic does for the same float32 zoom and sigma. nnU-Net's sigma
  is a double (here float32), and it picks conv or FFT convolution by timing
  (benchmark=True), which only changes rounding. A slice dimension of 1 whose zoomed
  size rounds to 0 (torch raises) is kept at 1.
- Not included: nnU-Net's MaskImageTransform (use_mask_for_norm datasets), cascade and
  region transforms, and deep-supervision label downsampling (losses' business).
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ecam_jax.data.nnunet_transforms import (
  blur_axis,
  blur_radius_thresholds,
  contrast,
  gamma,
  simulate_low_resolution,
  spatial,
)

Range = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class NnUNet2D:
  """Probabilities (per example unless `per_channel`) and ranges; nnU-Net's by default.

  rotation_degrees None: nnU-Net's rule from the slice's shape (+-15 degrees when the
  longer side exceeds 1.5 times the shorter, else +-180).
  """

  p_rotation: float = 0.2
  rotation_degrees: float | None = None
  p_scaling: float = 0.2
  scaling: Range = (0.7, 1.4)
  p_noise: float = 0.1
  noise_std: Range = (0.0, 0.1)
  p_blur: float = 0.2
  p_blur_per_channel: float = 0.5
  blur_sigma: Range = (0.5, 1.0)
  p_brightness: float = 0.15
  brightness: Range = (0.75, 1.25)
  p_contrast: float = 0.15
  contrast: Range = (0.75, 1.25)
  p_low_resolution: float = 0.25
  p_low_resolution_per_channel: float = 0.5
  low_resolution_zoom: Range = (0.5, 1.0)
  p_inverted_gamma: float = 0.1
  p_gamma: float = 0.3
  gamma: Range = (0.7, 1.5)
  p_mirror: float = 0.5  # per axis

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if field.name.startswith('p_') and not 0.0 <= value <= 1.0:
        raise ValueError(f'NnUNet2D.{field.name}={value}; expected a probability in [0, 1]')
      if isinstance(value, tuple) and not (len(value) == 2 and value[0] <= value[1]):
        raise ValueError(f'NnUNet2D.{field.name}={value}; expected (lo, hi) with lo <= hi')
    if not (self.low_resolution_zoom[0] > 0.0 and self.low_resolution_zoom[1] <= 1.0):
      raise ValueError(f'NnUNet2D.low_resolution_zoom={self.low_resolution_zoom}; in (0, 1]')
    if not self.blur_sigma[0] > 0.0:
      raise ValueError(f'NnUNet2D.blur_sigma={self.blur_sigma}; expected sigmas > 0')

  def rotation_limit(self, height: int, width: int) -> float:
    """The largest rotation in degrees (nnUNetTrainer.py:482-485 for None)."""
    if self.rotation_degrees is not None:
      return float(self.rotation_degrees)
    return 15.0 if max(height, width) / min(height, width) > 1.5 else 180.0


class NnUNetParams(NamedTuple):
  """One example's draws (a batch: a leading [B]). Flags say whether a transform fires;
  its values are drawn whether or not it does."""

  rotate: jax.Array  # bool
  angle: jax.Array  # float32, radians
  rescale: jax.Array  # bool
  scale: jax.Array  # float32, > 1 zooms out
  noise: jax.Array  # bool
  noise_std: jax.Array  # float32
  noise_field: jax.Array  # float32 [H, W, C], standard normal
  blur: jax.Array  # bool
  blur_channel: jax.Array  # bool [C]
  blur_sigma: jax.Array  # float32 [C, 2] (per channel, per axis)
  brightness: jax.Array  # bool
  brightness_factor: jax.Array  # float32 [C]
  contrast: jax.Array  # bool
  contrast_factor: jax.Array  # float32 [C]
  low_resolution: jax.Array  # bool
  low_resolution_channel: jax.Array  # bool [C]
  low_resolution_zoom: jax.Array  # float32 [C]
  inverted_gamma: jax.Array  # bool
  inverted_gamma_value: jax.Array  # float32 [C]
  gamma: jax.Array  # bool
  gamma_value: jax.Array  # float32 [C]
  mirror: jax.Array  # bool [2] (rows, columns)


# One uniform in [0, 1) per draw (a Bernoulli(p) is u < p, as jax.random.bernoulli; a
# range (lo, hi) is lo + (hi - lo) u, as jax.random.uniform; a standard normal is
# sqrt(2) erfinv(u) with u uniform in (-1, 1), as jax.random.normal), all from one
# generation of random bits per example: one threefry per draw made sample_params take
# seconds to compile. The example's draws come first, then each channel's, then the noise.
_EXAMPLE_DRAWS = 14
_CHANNEL_DRAWS = 13


def _within(bounds: Range, u: jax.Array) -> jax.Array:
  return bounds[0] + (bounds[1] - bounds[0]) * u


def bg_contrast(bounds: Range, side: jax.Array, u: jax.Array) -> jax.Array:
  """BGContrast's draw (contrast.py:16-19) from two uniforms: when side < 0.5 (and lo < 1)
  uniform in (lo, 1), else uniform in (max(lo, 1), hi)."""
  lo, hi = bounds
  high = _within((max(lo, 1.0), hi), u)
  return high if lo >= 1.0 else jnp.where(side < 0.5, _within((lo, 1.0), u), high)


def sample_params(
  key: jax.Array, settings: NnUNet2D, channels: int, height: int, width: int
) -> NnUNetParams:
  """Every draw of one example of `channels` channels and [height, width], from its key."""
  draws = _EXAMPLE_DRAWS + _CHANNEL_DRAWS * channels
  u = jax.random.uniform(key, (draws + height * width * channels,), jnp.float32)
  one = iter(u[:_EXAMPLE_DRAWS])
  each = iter(u[_EXAMPLE_DRAWS:draws].reshape(channels, _CHANNEL_DRAWS).T)  # next(each): [C]
  above_minus_one = float(np.nextafter(np.float32(-1), np.float32(0)))
  normal = np.sqrt(2.0) * jax.lax.erf_inv(_within((above_minus_one, 1.0), u[draws:]))
  s = settings
  limit = float(np.deg2rad(s.rotation_limit(height, width)))
  return NnUNetParams(
    rotate=next(one) < s.p_rotation,
    angle=_within((-limit, limit), next(one)),
    rescale=next(one) < s.p_scaling,
    scale=_within(s.scaling, next(one)),
    noise=next(one) < s.p_noise,
    noise_std=_within(s.noise_std, next(one)),
    noise_field=normal.reshape(height, width, channels).astype(jnp.float32),
    blur=next(one) < s.p_blur,
    blur_channel=next(each) < s.p_blur_per_channel,
    blur_sigma=jnp.stack([_within(s.blur_sigma, next(each)) for _ in range(2)], axis=-1),
    brightness=next(one) < s.p_brightness,
    brightness_factor=bg_contrast(s.brightness, next(each), next(each)),
    contrast=next(one) < s.p_contrast,
    contrast_factor=bg_contrast(s.contrast, next(each), next(each)),
    low_resolution=next(one) < s.p_low_resolution,
    low_resolution_channel=next(each) < s.p_low_resolution_per_channel,
    low_resolution_zoom=_within(s.low_resolution_zoom, next(each)),
    inverted_gamma=next(one) < s.p_inverted_gamma,
    inverted_gamma_value=bg_contrast(s.gamma, next(each), next(each)),
    gamma=next(one) < s.p_gamma,
    gamma_value=bg_contrast(s.gamma, next(each), next(each)),
    mirror=jnp.stack([next(one) < s.p_mirror for _ in range(2)]),
  )


# --- the chain -------------------------------------------------------------------------


def apply_params(
  params: NnUNetParams, image: jax.Array, label: jax.Array, settings: NnUNet2D = NnUNet2D()
) -> tuple[jax.Array, jax.Array]:
  """One example: image float32 [H, W, C], label [H, W, 1] integer (dtypes kept).
  `settings` only fixes static sizes (the blur kernel's largest radius)."""
  p = params
  dtype, label_dtype = image.dtype, label.dtype
  x, lab = image.astype(jnp.float32), label[..., 0].astype(jnp.int32)

  moved = spatial(jnp.where(p.rotate, p.angle, 0.0), jnp.where(p.rescale, p.scale, 1.0), x, lab)
  fire = p.rotate | p.rescale
  x, lab = jnp.where(fire, moved[0], x), jnp.where(fire, moved[1], lab)

  x = jnp.where(p.noise, x + p.noise_std * p.noise_field, x)

  thresholds = blur_radius_thresholds(settings.blur_sigma[1])
  blur_one = lambda c, s: blur_axis(blur_axis(c, s[0], 0, thresholds), s[1], 1, thresholds)
  blurred = jax.vmap(blur_one, in_axes=(-1, 0), out_axes=-1)(x, p.blur_sigma)
  x = jnp.where(p.blur & p.blur_channel, blurred, x)

  x = jnp.where(p.brightness, x * p.brightness_factor, x)
  x = jnp.where(p.contrast, contrast(x, p.contrast_factor), x)

  coarse = jax.vmap(simulate_low_resolution, in_axes=(-1, 0), out_axes=-1)(x, p.low_resolution_zoom)
  x = jnp.where(p.low_resolution & p.low_resolution_channel, coarse, x)

  x = jnp.where(p.inverted_gamma, gamma(x, p.inverted_gamma_value, invert=True), x)
  x = jnp.where(p.gamma, gamma(x, p.gamma_value, invert=False), x)

  x = jnp.where(p.mirror[0], x[::-1], x)
  lab = jnp.where(p.mirror[0], lab[::-1], lab)
  x = jnp.where(p.mirror[1], x[:, ::-1], x)
  lab = jnp.where(p.mirror[1], lab[:, ::-1], lab)
  return x.astype(dtype), lab[..., None].astype(label_dtype)


def augment_batch(
  keys: jax.Array, images: jax.Array, labels: jax.Array, settings: NnUNet2D = NnUNet2D()
) -> tuple[jax.Array, jax.Array]:
  """keys [B] (jax.random.key), images float32 [B, H, W, C], labels [B, H, W, 1].

  Jittable and vmapped: an example's result depends only on its own key.
  """
  _, height, width, channels = images.shape

  def one(key, image, label):
    params = sample_params(key, settings, channels, height, width)
    return apply_params(params, image, label, settings)

  return jax.vmap(one)(keys, images, labels)
