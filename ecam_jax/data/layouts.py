"""Finding the cases of a dataset: three folder layouts, each as its own documentation says.

- `msd` (Medical Segmentation Decathlon): `dataset.json` whose `training` list names
  image/label pairs (`./imagesTr/x.nii.gz`, `./labelsTr/x.nii.gz`), whose `labels` maps
  label values to names and whose `modality` names the channel(s).
- `kits19` (KiTS19 challenge repository): `case_00000/imaging.nii.gz` and
  `case_00000/segmentation.nii.gz`; the official test cases (210-299) have no segmentation
  and are skipped, with a note.
- `paired`: `images/` and `labels/` holding NIfTI files matched by file name (e.g. NIH
  Pancreas-CT after conversion to NIfTI, or anyone's own data).

macOS resource forks (`._*`) and other hidden files are ignored everywhere.
"""

import dataclasses
import json
import pathlib
import re
from typing import Any

import ml_collections
from absl import logging

from ecam_jax.errors import ConfigError, DataError

LAYOUTS = {
  'msd': 'dataset.json with a training list, imagesTr/ and labelsTr/',
  'kits19': 'case_00000/, case_00001/, ... folders holding imaging.nii.gz and segmentation.nii.gz',
  'paired': 'images/ and labels/ holding NIfTI files with matching names',
}
NIFTI_SUFFIXES = ('.nii.gz', '.nii')


@dataclasses.dataclass(frozen=True)
class Case:
  """One volume and its label (None where a dataset has no label for it)."""

  case_id: str
  image: pathlib.Path
  label: pathlib.Path | None


def case_id_of(path: pathlib.Path) -> str:
  """The file name without its NIfTI suffix: `imagesTr/pancreas_001.nii.gz` -> pancreas_001."""
  for suffix in NIFTI_SUFFIXES:
    if path.name.endswith(suffix):
      return path.name[: -len(suffix)]
  return path.stem


def _visible(path: pathlib.Path) -> bool:
  return not path.name.startswith('.')  # also drops macOS '._x.nii.gz' resource forks


def nifti_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """The .nii and .nii.gz files in `folder`, sorted by name; hidden files left out."""
  return sorted(
    p for p in folder.iterdir() if p.is_file() and _visible(p) and p.name.endswith(NIFTI_SUFFIXES)
  )


def _root(data_config: ml_collections.ConfigDict) -> pathlib.Path:
  layout = data_config.layout
  if layout not in LAYOUTS:
    raise ConfigError(f'config.data.layout={layout!r}; expected one of {sorted(LAYOUTS)}')
  root = pathlib.Path(data_config.root) if data_config.root else None
  if root is None or not root.is_dir():
    raise DataError(
      f'config.data.root={str(data_config.root)!r} is not a directory; the {layout!r} layout '
      f'expects a folder with {LAYOUTS[layout]}'
    )
  return root


def discover_cases(data_config: ml_collections.ConfigDict) -> list[Case]:
  """The labelled cases under `data_config.root`, sorted by case id.

  Every file a case names exists when this returns; reading them is volumes.py's job.
  """
  root = _root(data_config)
  finder = {'msd': _msd_cases, 'kits19': _kits_cases, 'paired': _paired_cases}[data_config.layout]
  cases = finder(root, data_config)
  if not cases:
    raise DataError(
      f'{root}: no labelled cases found; the {data_config.layout!r} layout expects '
      f'{LAYOUTS[data_config.layout]}'
    )
  seen: dict[str, Case] = {}
  for case in cases:
    if case.case_id in seen:
      raise DataError(
        f'{case.image} and {seen[case.case_id].image} have the same case id '
        f'{case.case_id!r}; case ids (file names without suffix) must be unique'
      )
    seen[case.case_id] = case
  return sorted(cases, key=lambda c: c.case_id)


DEFAULT_MODALITY = 'CT'  # where neither the config nor dataset.json names one
DEFAULT_LABEL_VALUES = (0, 1)  # layouts without dataset.json, when the config declares none


def resolve_settings(data_config: ml_collections.ConfigDict) -> None:
  """Fills config.data.modality, label_values and foreground_labels where they are unset.

  The msd layout's dataset.json declares the modality ('CT' stays CT, any other channel
  name (MRI, MR, T2, ...) is normalized as MR, as nnU-Net does) and the label values;
  other layouts use config.data.label_values, else {0} and the foreground labels, else
  DEFAULT_LABEL_VALUES. Foreground defaults to every non-zero label value. An explicit
  setting that disagrees with dataset.json raises ConfigError naming the key, as do
  foreground labels that are not label values. Setting a value to what this resolved
  changes nothing, so running it again on its own result is a no-op. Reads dataset.json
  only: cheap enough to run before any volume is read.
  """
  data = data_config
  path, name, modality, labels = None, None, None, None
  if data.layout == 'msd':
    path = _root(data) / 'dataset.json'
    meta = _read_dataset_json(path)
    name, labels = _declared_modality(meta, path), _declared_labels(meta, path)
    modality = name and ('CT' if name.strip().upper() == 'CT' else 'MR')
  if modality and data.modality and data.modality != modality:
    raise ConfigError(
      f'{path} declares modality {name!r} ({modality}) but config.data.modality='
      f"{data.modality!r}; leave config.data.modality unset ('') to use the dataset's"
    )
  data.modality = data.modality or modality or DEFAULT_MODALITY
  if labels is not None:
    if data.label_values is not None and sorted(set(data.label_values)) != list(labels):
      raise ConfigError(
        f'{path} declares the label values {list(labels)} but config.data.label_values='
        f"{tuple(data.label_values)}; leave it unset (None) to use the dataset's"
      )
  elif data.label_values is not None:
    labels = tuple(sorted(int(v) for v in data.label_values))
  elif data.foreground_labels is not None:
    labels = tuple(sorted({0, *(int(v) for v in data.foreground_labels)}))
  else:
    labels = DEFAULT_LABEL_VALUES
  data.label_values = labels
  if data.foreground_labels is None:
    data.foreground_labels = tuple(v for v in labels if v != 0)
  foreground = tuple(sorted(int(v) for v in data.foreground_labels))
  undeclared = sorted(set(foreground) - set(labels))
  if undeclared:
    where = f'{path} "labels"' if data.layout == 'msd' else 'config.data.label_values'
    raise ConfigError(
      f'config.data.foreground_labels has {undeclared}, not among the declared label values '
      f'{list(labels)} ({where})'
    )
  if not foreground:
    raise ConfigError(
      f'no foreground: the declared label values are {list(labels)}; set '
      'config.data.foreground_labels or the label values'
    )
  data.foreground_labels = foreground


def declared_names(data_config: ml_collections.ConfigDict) -> dict[int, str]:
  """Label value -> name, as the msd layout's dataset.json "labels" gives them (names made
  identifiers: 'left atrium' -> 'left_atrium'); {} for other layouts."""
  if data_config.layout != 'msd':
    return {}
  path = _root(data_config) / 'dataset.json'
  labels = _read_dataset_json(path).get('labels')
  _declared_labels({'labels': labels}, path)
  names = {}
  for value, name in labels.items():
    word = re.sub(r'[^A-Za-z0-9_-]+', '_', str(name).strip()).strip('_')
    names[int(value)] = word if word[:1].isalpha() else f'label{int(value)}'
  return names


def _read_dataset_json(path: pathlib.Path) -> dict[str, Any]:
  if not path.is_file():
    raise DataError(f'{path} is missing; the msd layout expects {LAYOUTS["msd"]}')
  try:
    meta = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f'{path} is not valid JSON ({e})') from None
  if not isinstance(meta, dict):
    raise DataError(f'{path}: expected a JSON object, found {type(meta).__name__}')
  return meta


def _declared_labels(meta: dict[str, Any], path: pathlib.Path) -> tuple[int, ...]:
  labels = meta.get('labels')
  try:
    values = tuple(sorted(int(k) for k in labels))
  except (TypeError, ValueError):
    values = ()
  if not isinstance(labels, dict) or not values or min(values) < 0:
    raise DataError(
      f'{path}: "labels" is {labels!r}; expected a mapping like {{"0": "background", "1": ...}}'
    )
  return values


def _declared_modality(meta: dict[str, Any], path: pathlib.Path) -> str | None:
  """The channel name dataset.json's "modality" gives (e.g. 'CT', 'MRI'), None if none."""
  modality = meta.get('modality')
  if not isinstance(modality, dict) or not modality:
    return None  # not every dataset.json written by hand has it; the config then decides
  if len(modality) > 1:
    raise DataError(
      f'{path}: modality {modality} has {len(modality)} channels; only single-channel '
      'volumes are supported'
    )
  (name,) = modality.values()
  return str(name)


def _msd_cases(root: pathlib.Path, data_config) -> list[Case]:
  path = root / 'dataset.json'
  meta = _read_dataset_json(path)
  training = meta.get('training')
  if not isinstance(training, list):
    raise DataError(f'{path}: expected a "training" list of {{"image", "label"}} entries')
  cases = []
  for i, entry in enumerate(training):
    if not isinstance(entry, dict) or not {'image', 'label'} <= entry.keys():
      raise DataError(f'{path}: training[{i}] is {entry!r}; expected {{"image": .., "label": ..}}')
    files = {}
    for key in ('image', 'label'):
      file = root / entry[key]
      if not file.is_file():
        raise DataError(f'{file} is listed in {path} (training[{i}].{key}) but does not exist')
      files[key] = file
    if _visible(files['image']):
      cases.append(Case(case_id_of(files['image']), files['image'], files['label']))
  return cases


def _kits_cases(root: pathlib.Path, data_config) -> list[Case]:
  cases, unlabelled = [], []
  for folder in sorted(p for p in root.glob('case_*') if p.is_dir()):
    image, label = folder / 'imaging.nii.gz', folder / 'segmentation.nii.gz'
    if not image.is_file():
      raise DataError(f'{image} is missing; the kits19 layout expects {LAYOUTS["kits19"]}')
    if label.is_file():
      cases.append(Case(folder.name, image, label))
    else:
      unlabelled.append(folder.name)
  if unlabelled:
    logging.info(
      'kits19: %d cases without segmentation.nii.gz are skipped for training (%s ... %s)',
      len(unlabelled),
      unlabelled[0],
      unlabelled[-1],
    )
  return cases


def _nifti_files(folder: pathlib.Path) -> dict[str, pathlib.Path]:
  if not folder.is_dir():
    raise DataError(f'{folder} is missing; the paired layout expects {LAYOUTS["paired"]}')
  return {p.name: p for p in nifti_files(folder)}


def _paired_cases(root: pathlib.Path, data_config) -> list[Case]:
  images, labels = _nifti_files(root / 'images'), _nifti_files(root / 'labels')
  for have, lack in ((images, labels), (labels, images)):
    unmatched = sorted(have.keys() - lack.keys())
    if unmatched:
      src = 'images' if have is images else 'labels'
      dst = 'labels' if have is images else 'images'
      raise DataError(
        f'{root / src}: {len(unmatched)} files have no file of the same name in '
        f'{root / dst} (e.g. {unmatched[0]}); the paired layout matches by file name'
      )
  return [Case(case_id_of(images[n]), images[n], labels[n]) for n in sorted(images)]
