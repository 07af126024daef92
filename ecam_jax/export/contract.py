"""preprocessing.json: what an export expects and returns, and where it came from.

Everything a deployment needs to turn a NIfTI volume into the network's input and its
output into a label map, without this project: the orientation, the intensity
normalisation with its numbers, the in-plane size and resize method, the decision rule
(threshold or argmax) and the label values, flip TTA and the kept components; each
artifact's tensor names, shapes and layout; the measured agreement of the artifacts with
the JAX model; and the provenance (config, checkpoint step and score, versions). Written by
`folder.export`, read by `segment.py` (python -m ecam_jax.export_check).
"""

import datetime
import importlib.metadata
import json
import pathlib
import platform
from typing import Any

import ml_collections

from ecam_jax import classes, postprocess
from ecam_jax.data import normalization, volumes
from ecam_jax.errors import DataError

FILE = 'preprocessing.json'
FORMAT, VERSION = 'ecam-jax export', 2  # 2: the input's channels (1: one channel)
READABLE = (1, 2)
# Distributions whose versions made an export.
DISTRIBUTIONS = ('ecam-jax', 'jax', 'jaxlib', 'flax', 'numpy', 'jax2onnx', 'onnx', 'onnxruntime')

# scipy.ndimage.zoom as data/volumes.py resizes, in both directions.
_ZOOM = "scipy.ndimage.zoom(x, (1, {zoom}), order=1, mode='nearest', grid_mode=True)"
_ZOOM_HOW = (
  ': linear, pixel areas (not centres) aligned, edges replicated, the slice axis untouched'
)


def _intensity(data: ml_collections.ConfigDict, channel: int) -> dict[str, Any]:
  """How channel `channel` is normalized (normalization.normalize), with its numbers."""
  name = data.channels[channel]
  scheme = normalization.normalization_of(name)
  out: dict[str, Any] = {'channel': channel, 'name': name, 'normalization': scheme}
  if scheme == 'CT' and data.ct_normalization == 'nnunet':
    lo, hi, mean, std = data.ct_statistics[normalization.ct_channels(data).index(channel)]
    out.update(
      ct_statistics=[lo, hi, mean, std],
      formula='(clip(x, lo, hi) - mean) / max(std, 1e-8) with ct_statistics, in float32',
    )
  elif scheme == 'CT':
    lo, hi = (float(v) for v in data.hu_window)
    out.update(
      hu_window=[lo, hi],
      formula='(clip(x, lo, hi) - lo) / (hi - lo) with [lo, hi] = hu_window, in float32',
    )
  elif scheme == 'zscore':
    out.update(
      percentiles=[float(v) for v in data.mr_percentiles],
      formula=(
        'clip(x, p_lo, p_hi) with p_lo, p_hi = numpy.percentile(volume, percentiles), then '
        '(x - mean) / max(std, 1e-6) with the mean and std of the clipped volume, in float32'
      ),
    )
  else:
    out['formula'] = {
      'noNorm': 'x as float32',
      'rescale_to_0_1': '(x - min) / max(max - min, 1e-8) over the volume, in float32',
      'rgb_to_0_1': 'x / 255, in float32',
    }[scheme]
  return out


def input_section(data: ml_collections.ConfigDict) -> dict[str, Any]:
  s = int(data.image_size)
  return {
    'orientation': {
      'axcodes': list(volumes.CANONICAL_AXCODES),
      'how': (
        'nibabel: apply_orientation(data, ornt_transform(io_orientation(affine), '
        'axcodes2ornt(axcodes))): axes permuted and flipped, never resampled'
      ),
      'array': (
        '[Z, H, W]: axis 0 the axial slices from inferior to superior, rows from anterior '
        "to posterior, columns from the patient's right to left (radiological view)"
      ),
    },
    'channels': [_intensity(data, c) for c in range(len(data.channels))],
    'channels_how': (
      "one NIfTI file per channel (nnU-Net's CASE_0000, CASE_0001, ...) or one 4-D file "
      "[x, y, z, C], all on channel 0's grid; each normalized by itself, then stacked last: "
      '[Z, S, S, C] (NHWC) or [Z, C, S, S] (NCHW)'
    ),
    'resize': {'size': [s, s], 'method': _ZOOM.format(zoom=f'{s} / H, {s} / W') + _ZOOM_HOW},
    'steps': 'orientation, then the intensity over the whole volume, then the resize',
  }


def output_section(config: ml_collections.ConfigDict) -> dict[str, Any]:
  k = int(config.model.num_classes)
  # one value for every foreground class (None, unset, keeps every voxel), or one each
  keep = list(postprocess.per_class(config.eval.keep_components, max(k - 1, 1)))
  keep = keep[0] if len(set(keep)) == 1 else keep
  out: dict[str, Any] = {'channels': k}
  if k == 1:
    out['activation'] = 'sigmoid'
    out['decision'] = {
      'rule': 'threshold',
      'threshold': float(config.eval.threshold),
      'how': 'a voxel is foreground where its restored probability is > threshold',
    }
  else:
    out['activation'] = 'softmax over the channels'
    out['decision'] = {
      'rule': 'argmax',
      'how': 'a voxel takes the channel of the largest restored probability',
    }
  out['label_values'] = list(classes.output_label_values(config))
  out['label_values_how'] = 'the value written for each decision index (0: background)'
  out['tta_flip'] = bool(config.eval.tta_flip)
  out['tta_how'] = (
    'when tta_flip: the mean of the probabilities of each slice and of its mirror along W '
    '(the columns), mirrored back'
  )
  out['restore'] = (
    'probabilities [Z, S, S] (each channel on its own) resized back to the canonical '
    f'[Z, H, W] with {_ZOOM.format(zoom="H / S, W / S")}; then the decision; then the '
    "inverse orientation, back to the file's voxel order"
  )
  out['keep_components'] = {
    'value': keep,
    'connectivity': 26,
    'how': (
      'one value for every foreground label value, or a list of one per decision index 1, '
      '2, ...: 0: every voxel kept; an integer k >= 1: the k largest 3-D connected '
      'components; a fraction f in (0, 1): each component with at least f times the '
      'largest one voxels; the removed voxels become background'
    ),
  }
  out['label_map'] = (
    "the input's shape, affine, sform and qform; uint8 (uint16 for label values past 255)"
  )
  return out


def versions() -> dict[str, str | None]:
  found = {'python': platform.python_version()}
  for name in DISTRIBUTIONS:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = None
  return found


def build(
  config: ml_collections.ConfigDict,
  artifacts: dict[str, Any],
  verification: dict[str, Any],
  provenance: dict[str, Any],
) -> dict[str, Any]:
  """The whole contract; `provenance` gets the versions, the time and the config added."""
  provenance = {
    **provenance,
    'versions': versions(),
    'exported': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    'config': json.loads(config.to_json_best_effort()),
  }
  return {
    'format': FORMAT,
    'version': VERSION,
    'input': input_section(config.data),
    'output': output_section(config),
    'artifacts': artifacts,
    'verification': verification,
    'provenance': provenance,
  }


def read(folder: str | pathlib.Path) -> dict[str, Any]:
  """The contract of an export folder; DataError naming the file when it is not one."""
  path = pathlib.Path(folder) / FILE
  try:
    contract = json.loads(path.read_text())
  except FileNotFoundError:
    raise DataError(f'{path} does not exist: --export must name an export folder') from None
  except (OSError, json.JSONDecodeError) as e:
    raise DataError(f'{path} cannot be read as JSON ({e})') from None
  if not isinstance(contract, dict) or contract.get('format') != FORMAT:
    raise DataError(f'{path} is not an ecam-jax export contract (no "format": "{FORMAT}")')
  if contract.get('version') not in READABLE:
    raise DataError(
      f'{path}: version {contract.get("version")!r}; this code reads versions {list(READABLE)}'
    )
  return contract


def eval_settings(contract: dict[str, Any]) -> ml_collections.ConfigDict:
  """The config.eval values `label_maps.label_map` reads, from the contract alone."""
  out = contract['output']
  threshold = out['decision'].get('threshold')  # none for argmax
  return ml_collections.ConfigDict(
    {'threshold': threshold, 'keep_components': out['keep_components']['value']}
  )


def data_settings(contract: dict[str, Any]) -> ml_collections.ConfigDict:
  """The config.data values `volumes.preprocess_image` reads, from the contract alone (a
  version-1 contract's one channel included)."""
  channels = contract['input'].get('channels') or [contract['input']['intensity']]
  first = {key: c[key] for c in channels for key in c}  # the numbers each scheme needs
  statistics = [c['ct_statistics'] for c in channels if 'ct_statistics' in c]
  return ml_collections.ConfigDict(
    {
      'channels': tuple(c.get('name', c.get('modality')) for c in channels),
      'ct_normalization': 'nnunet' if statistics else 'window',
      'ct_statistics': tuple(tuple(s) for s in statistics) or None,
      'hu_window': tuple(first.get('hu_window', (0.0, 1.0))),
      'mr_percentiles': tuple(first.get('percentiles', (0.0, 100.0))),
      'image_size': int(contract['input']['resize']['size'][0]),
    }
  )
