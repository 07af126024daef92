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
from typing import Any

import ml_collections
from absl import logging

from ecam_jax.configuration import ConfigError
from ecam_jax.data.errors import DataError

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


def declared_labels(
  data_config: ml_collections.ConfigDict, root: str | pathlib.Path
) -> tuple[int, ...]:
  """The label values a label file may hold: MSD from dataset.json, else from the config."""
  if data_config.layout == 'msd':
    path = pathlib.Path(root) / 'dataset.json'
    labels = _read_dataset_json(path).get('labels')
    try:
      return tuple(sorted(int(k) for k in labels))
    except (TypeError, ValueError):
      raise DataError(
        f'{path}: "labels" is {labels!r}; expected a mapping like {{"0": "background", "1": ...}}'
      ) from None
  if data_config.label_values is not None:
    return tuple(sorted(int(v) for v in data_config.label_values))
  return tuple(sorted({0, *(int(v) for v in data_config.foreground_labels)}))


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


def _check_modality(meta: dict[str, Any], path: pathlib.Path, data_config) -> None:
  modality = meta.get('modality')
  if not isinstance(modality, dict) or not modality:
    return  # not every dataset.json written by hand has it; the config then decides
  if len(modality) > 1:
    raise DataError(
      f'{path}: modality {modality} has {len(modality)} channels; only single-channel '
      'volumes are supported'
    )
  (name,) = modality.values()
  kind = 'CT' if str(name).upper() == 'CT' else 'MR'
  if kind != data_config.modality:
    raise ConfigError(
      f'{path} says modality {name!r} but config.data.modality={data_config.modality!r}; '
      f'set config.data.modality={kind!r}'
    )


def _msd_cases(root: pathlib.Path, data_config) -> list[Case]:
  path = root / 'dataset.json'
  meta = _read_dataset_json(path)
  _check_modality(meta, path, data_config)
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
