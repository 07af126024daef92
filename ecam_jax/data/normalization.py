"""How each channel's intensities are normalized, by the channel's name as nnU-Net names
them: CT a HU window scaled to [0, 1] (or nnU-Net's CT scheme, with the dataset's
statistics); MR and any other name a percentile clip and z-score per volume; 'noNorm',
'rescale_to_0_1' and 'rgb_to_0_1' as named.

Every scheme is one clip and one affine map, `(x.clip(lo, hi) - shift) / scale`, with
numbers that depend at most on the volume (`normalization`): the host applies it to a
whole volume (`normalize`), and the device, per batch of slices, the same numbers
(infer.py), so that a volume's statistics are computed once and the rest runs beside the
model.
"""

from typing import NamedTuple

import ml_collections
import numpy as np

from ecam_jax.errors import ConfigError

# nnU-Net's channel_names that name a normalization (matched case-insensitively); any other
# name (MRI, T2, ADC, zscore, ...) is z-scored per volume.
NORMALIZATIONS = {
  'ct': 'CT',
  'nonorm': 'noNorm',
  'rescale_to_0_1': 'rescale_to_0_1',
  'rgb_to_0_1': 'rgb_to_0_1',
}


def normalization_of(channel: str) -> str:
  """How a channel named `channel` is normalized: 'CT', 'noNorm', 'rescale_to_0_1',
  'rgb_to_0_1' or 'zscore'."""
  return NORMALIZATIONS.get(str(channel).strip().lower(), 'zscore')


def channel_names(data_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """config.data.channels, or for one channel config.data.modality."""
  if data_config.channels:
    return tuple(data_config.channels)
  if data_config.modality:
    return (data_config.modality,)
  raise ConfigError(
    'config.data.channels is unset (and config.data.modality too): they are read from the '
    "dataset (source.resolve_data), or set config.data.modality ('CT' or 'MR') or "
    'config.data.channels'
  )


def ct_channels(data_config: ml_collections.ConfigDict) -> list[int]:
  """The channels normalized as CT."""
  names = channel_names(data_config)
  return [c for c, name in enumerate(names) if normalization_of(name) == 'CT']


class Normalization(NamedTuple):
  """One channel's normalization of one volume: `(x.clip(lo, hi) - shift) / scale`."""

  lo: float
  hi: float
  shift: float
  scale: float

  def apply(self, x):
    """float32 of a NumPy or a JAX array (the same operations on either)."""
    return ((x.clip(self.lo, self.hi) - self.shift) / self.scale).astype(np.float32)


def normalization(
  array: np.ndarray, data_config: ml_collections.ConfigDict, channel: int = 0
) -> Normalization:
  """The numbers that normalize channel `channel` (data.channels names it) of a volume,
  by its name: CT a window (data.hu_window) scaled to [0, 1], or with
  data.ct_normalization='nnunet' clipped to data.ct_statistics' percentiles and z-scored
  with their mean and std; 'zscore' (MR and any other name) clipped at data.mr_percentiles
  and z-scored per volume; 'noNorm' as it is; 'rescale_to_0_1' to [0, 1] per volume;
  'rgb_to_0_1' divided by 255. Only 'zscore' and 'rescale_to_0_1' read the array.

  The keys are checked by configuration.check, and data.channels filled in by
  layouts.resolve_settings, before any volume is read.
  """
  scheme = normalization_of(channel_names(data_config)[channel])
  if scheme == 'CT' and data_config.ct_normalization == 'nnunet':
    if not data_config.ct_statistics:
      raise ConfigError(
        "config.data.ct_statistics is unset; config.data.ct_normalization='nnunet' needs "
        "them (computed with the cache, recorded in the workdir's config.json)"
      )
    lo, hi, mean, std = data_config.ct_statistics[ct_channels(data_config).index(channel)]
    return Normalization(float(lo), float(hi), float(mean), max(float(std), 1e-8))
  if scheme == 'CT':
    lo, hi = (float(v) for v in data_config.hu_window)
    return Normalization(lo, hi, lo, float(np.float32(hi - lo)))
  if scheme in ('noNorm', 'rgb_to_0_1'):
    return Normalization(-np.inf, np.inf, 0.0, 255.0 if scheme == 'rgb_to_0_1' else 1.0)
  array = np.asarray(array, np.float32)
  if scheme == 'rescale_to_0_1':
    lo, hi = float(array.min()), float(array.max())
    return Normalization(lo, hi, lo, max(hi - lo, 1e-8))
  lo, hi = np.percentile(array, data_config.mr_percentiles)
  clipped = np.clip(array, lo, hi)  # float64 (NumPy's float64 scalars), as is the z-score
  return Normalization(lo, hi, clipped.mean(), np.maximum(clipped.std(), 1e-6))


def normalize(
  array: np.ndarray, data_config: ml_collections.ConfigDict, channel: int = 0
) -> np.ndarray:
  """float32 intensities of channel `channel` of a volume (`normalization`)."""
  array = np.asarray(array, np.float32)
  return normalization(array, data_config, channel).apply(array)
