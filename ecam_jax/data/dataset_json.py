"""What a dataset's dataset.json declares, in either of its two forms.

- MSD v1 (the Medical Segmentation Decathlon): `modality` (channel index -> name), `labels`
  (value -> name) and a `training` list of {"image", "label"} pairs. A multi-modal task
  (Prostate's T2 + ADC, Brain Tumour's four sequences) stores each case as one 4-D file
  [x, y, z, C], one channel per `modality` entry.
- nnU-Net v2 (nnU-Net's documentation/dataset_format.md): `channel_names` (index -> name),
  `labels` (name -> value, or name -> a list of values for a region, with
  `regions_class_order`), `numTraining` and `file_ending`; the cases are the files in
  imagesTr/ ({CASE}_{NNNN}{file_ending}, one per channel) and labelsTr/.

Reading one is cheap (no volume is read), and every mistake in it is a DataError naming
the file and the key.
"""

import dataclasses
import json
import pathlib
import re
from typing import Any

from ecam_jax.errors import DataError

MSD, NNUNET = 'msd', 'nnunet'
FILE_ENDINGS = ('.nii.gz', '.nii')  # the file_ending values this project reads


@dataclasses.dataclass(frozen=True)
class Declared:
  """A dataset.json's declarations (`form` MSD or NNUNET)."""

  path: pathlib.Path
  form: str
  channels: tuple[str, ...] | None  # channel names by index; None: not declared (MSD only)
  label_values: tuple[int, ...]  # every value a label file may hold, 0 among them
  names: dict[int, str]  # label value -> its name as an identifier ('left atrium' -> left_atrium)
  regions: tuple[tuple[str, tuple[int, ...]], ...]  # nnU-Net's region labels: (name, values)
  file_ending: str | None  # nnU-Net v2's
  num_training: int | None
  training: tuple[dict[str, str], ...] | None  # MSD v1's training list


def read_json(path: pathlib.Path) -> dict[str, Any]:
  if not path.is_file():
    raise DataError(f'{path} is missing')
  try:
    meta = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f'{path} is not valid JSON ({e})') from None
  if not isinstance(meta, dict):
    raise DataError(f'{path}: expected a JSON object, found {type(meta).__name__}')
  return meta


def form_of(meta: dict[str, Any]) -> str:
  """NNUNET when the file has nnU-Net v2's `channel_names` and no MSD `training` list."""
  return NNUNET if 'channel_names' in meta and 'training' not in meta else MSD


def identifier(name: Any, value: int) -> str:
  """A label's name as this project's class names are written: letters, digits, _ and -,
  starting with a letter ('left atrium' -> 'left_atrium'); 'label<value>' if none is left."""
  word = re.sub(r'[^A-Za-z0-9_-]+', '_', str(name).strip()).strip('_')
  return word if word[:1].isalpha() else f'label{value}'


def _channels(meta: dict[str, Any], key: str, path: pathlib.Path) -> tuple[str, ...] | None:
  channels = meta.get(key)
  if channels is None and key == 'modality':
    return None  # not every MSD dataset.json written by hand has it; the config then decides
  if not isinstance(channels, dict) or not channels:
    raise DataError(f'{path}: "{key}" is {channels!r}; expected {{"0": "CT", ...}}')
  by_index = {}
  for k, name in channels.items():
    if str(k).isdigit():
      by_index[int(k)] = str(name)
  if sorted(by_index) != list(range(len(channels))):
    raise DataError(
      f'{path}: "{key}" has the keys {sorted(channels)}; expected the channel indices '
      f'"0" .. "{len(channels) - 1}"'
    )
  return tuple(by_index[i] for i in range(len(channels)))


def _is_value(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _msd_labels(meta: dict[str, Any], path: pathlib.Path) -> tuple[tuple[int, ...], dict]:
  labels = meta.get('labels')
  try:
    values = tuple(sorted(int(k) for k in labels))
  except (TypeError, ValueError):
    values = ()
  if not isinstance(labels, dict) or not values or min(values) < 0:
    raise DataError(
      f'{path}: "labels" is {labels!r}; expected a mapping like {{"0": "background", "1": ...}}'
    )
  return values, {int(k): identifier(v, int(k)) for k, v in labels.items()}


def _nnunet_labels(meta: dict[str, Any], path: pathlib.Path):
  """(label values, value -> name, regions) of nnU-Net v2's name -> value(s) `labels`."""
  labels = meta.get('labels')
  if not isinstance(labels, dict) or not labels:
    raise DataError(
      f'{path}: "labels" is {labels!r}; expected a mapping like {{"background": 0, "PZ": 1}}'
    )
  names, regions, values = {}, [], {0}
  for name, value in labels.items():
    if str(name).lower() == 'ignore':
      raise DataError(
        f'{path}: "labels" has an "ignore" label ({value!r}); unlabelled pixels are not '
        'supported: relabel them or leave the label out'
      )
    if _is_value(value):
      values.add(value)
      if value:
        names[value] = identifier(name, value)
    elif isinstance(value, list) and value and all(_is_value(v) and v > 0 for v in value):
      values.update(value)
      regions.append((identifier(name, value[0]), tuple(sorted(set(value)))))
    else:
      raise DataError(
        f'{path}: "labels" gives {name!r} the value {value!r}; expected an integer >= 0, or a '
        'list of integers >= 1 (a region)'
      )
  if labels.get('background', 0) != 0 or 0 not in labels.values():
    raise DataError(f'{path}: "labels" needs "background": 0')
  if regions:
    order = meta.get('regions_class_order')
    if not (isinstance(order, list) and order and all(_is_value(v) and v > 0 for v in order)):
      raise DataError(
        f'{path}: region labels (lists) need "regions_class_order", a list of the label '
        f'values in the files; found {order!r}'
      )
    values.update(order)
  return tuple(sorted(values)), names, tuple(regions)


def read(path: pathlib.Path) -> Declared:
  """The declarations of the dataset.json at `path`, checked (DataError naming the key)."""
  meta = read_json(path)
  if form_of(meta) == MSD:
    values, names = _msd_labels(meta, path)
    training = meta.get('training')
    if training is not None and not isinstance(training, list):
      raise DataError(f'{path}: expected a "training" list of {{"image", "label"}} entries')
    return Declared(
      path=path,
      form=MSD,
      channels=_channels(meta, 'modality', path),
      label_values=values,
      names=names,
      regions=(),
      file_ending=None,
      num_training=meta.get('numTraining'),
      training=None if training is None else tuple(training),
    )
  ending = meta.get('file_ending')
  if ending not in FILE_ENDINGS:
    raise DataError(
      f'{path}: "file_ending" is {ending!r}; this project reads NIfTI, expected one of '
      f'{list(FILE_ENDINGS)}'
    )
  count = meta.get('numTraining')
  if count is not None and not _is_value(count):
    raise DataError(f'{path}: "numTraining" is {count!r}; expected the number of cases')
  values, names, regions = _nnunet_labels(meta, path)
  return Declared(
    path=path,
    form=NNUNET,
    channels=_channels(meta, 'channel_names', path),
    label_values=values,
    names=names,
    regions=regions,
    file_ending=ending,
    num_training=count,
    training=None,
  )
