"""What nnU-Net's CT normalization needs from the whole dataset (its "fingerprint"): for
each CT channel, the 0.5 and 99.5 percentiles, mean and standard deviation of the
foreground intensities of every labelled case, computed once, recorded in
config.data.ct_statistics (and so in config.json and the export contract)."""

import numpy as np

from ecam_jax.data import normalization, volumes
from ecam_jax.errors import DataError

SAMPLES_PER_CASE = 10_000  # foreground voxels drawn from each case for the percentiles, as nnU-Net
PERCENTILES = (0.5, 99.5)


def ct_statistics(cases, data_config) -> tuple[tuple[float, float, float, float], ...]:
  """((p0.5, p99.5, mean, std) of each CT channel (normalization.ct_channels)): over the
  foreground voxels (label > 0) of `cases`; the percentiles from up to SAMPLES_PER_CASE
  voxels of each case drawn with a fixed seed, the mean and std from all of them."""
  channels = normalization.ct_channels(data_config)
  samples = [[] for _ in channels]
  sums = np.zeros((len(channels), 3))  # count, sum, sum of squares
  for k, case in enumerate(cases):
    label = volumes.integer_labels(volumes.load_nifti(case.label), case.label) > 0
    images = volumes.load_channels(case.images, len(data_config.channels))
    rng = np.random.default_rng(k)
    for i, c in enumerate(channels):
      values = np.asarray(images[c].dataobj, np.float64)[label]
      sums[i] += (values.size, values.sum(), np.square(values).sum())
      take = min(SAMPLES_PER_CASE, values.size)
      samples[i].append(rng.choice(values, take, replace=False) if take else values)
  out = []
  for i, c in enumerate(channels):
    count, total, squares = sums[i]
    if not count:
      raise DataError(
        f'no foreground voxel in any case: CT channel {c} has no statistics for '
        "config.data.ct_normalization='nnunet'"
      )
    mean = total / count
    std = float(np.sqrt(max(squares / count - mean * mean, 0.0)))
    lo, hi = np.percentile(np.concatenate(samples[i]), PERCENTILES)
    out.append((float(lo), float(hi), float(mean), std))
  return tuple(out)
