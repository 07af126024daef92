"""Finding the cases of a dataset: four folder layouts, each as its own documentation says.

- `msd` (Medical Segmentation Decathlon): `dataset.json` whose `training` list names
  image/label pairs (`./imagesTr/x.nii.gz`, `./labelsTr/x.nii.gz`), whose `labels` maps
  label values to names and whose `modality` names the channel(s); a multi-modal case is
  one 4-D file, a channel per `modality` entry.
- `nnunet` (nnU-Net v2's raw format): `dataset.json` with `channel_names`, `labels`,
  `numTraining` and `file_ending`; `imagesTr/{CASE}_{NNNN}{file_ending}` (one file per
  channel NNNN = 0000, 0001, ...) and `labelsTr/{CASE}{file_ending}`. An MSD-style folder
  whose dataset.json is of this form is read as this layout, with a note.
- `kits19` (KiTS19 challenge repository): `case_00000/imaging.nii.gz` and
  `case_00000/segmentation.nii.gz`; the official test cases (210-299) have no segmentation
  and are skipped, with a note.
- `paired`: `images/` and `labels/` holding NIfTI files matched by file name (e.g. NIH
  Pancreas-CT after conversion to NIfTI, or anyone's own data).

macOS resource forks (`._*`) and other hidden files are ignored everywhere.
"""

import pathlib

import ml_collections
from absl import logging

from ecam_jax.data import dataset_json as dataset_json_module
from ecam_jax.data import nnunet_layout
from ecam_jax.data.case_files import Case, case_id_of, nifti_files, visible
from ecam_jax.errors import ConfigError, DataError

LAYOUTS = {
  'msd': 'dataset.json with a training list, imagesTr/ and labelsTr/',
  'nnunet': nnunet_layout.DESCRIPTION,
  'kits19': 'case_00000/, case_00001/, ... folders holding imaging.nii.gz and segmentation.nii.gz',
  'paired': 'images/ and labels/ holding NIfTI files with matching names',
}


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


def dataset_json(data_config: ml_collections.ConfigDict) -> dataset_json_module.Declared | None:
  """The msd or nnunet layout's dataset.json, read (None for the other layouts)."""
  if data_config.layout not in ('msd', 'nnunet'):
    return None
  path = _root(data_config) / 'dataset.json'
  if not path.is_file():
    raise DataError(
      f'{path} is missing; the {data_config.layout!r} layout expects {LAYOUTS[data_config.layout]}'
    )
  return dataset_json_module.read(path)


def resolve_layout(data_config: ml_collections.ConfigDict) -> str | None:
  """Reads an msd-layout folder whose dataset.json is nnU-Net v2's as the nnunet layout
  (sets data.layout); returns a note saying so, else None."""
  if data_config.layout != 'msd':
    return None
  path = _root(data_config) / 'dataset.json'
  if path.is_file() and dataset_json_module.form_of(dataset_json_module.read_json(path)) == (
    dataset_json_module.NNUNET
  ):
    data_config.layout = 'nnunet'
    return (
      f"note: {path} is in nnU-Net v2's format (channel_names, no training list): the "
      "dataset is read with config.data.layout='nnunet'"
    )
  return None


def discover_cases(data_config: ml_collections.ConfigDict) -> list[Case]:
  """The labelled cases under `data_config.root`, sorted by case id.

  Every file a case names exists when this returns; reading them is volumes.py's job.
  """
  root = _root(data_config)
  finders = {'msd': _msd_cases, 'nnunet': _nnunet_cases, 'kits19': _kits_cases}
  finder = finders.get(data_config.layout, _paired_cases)
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


DEFAULT_MODALITY = 'CT'  # where neither the config nor dataset.json names the channel
DEFAULT_LABEL_VALUES = (0, 1)  # layouts without dataset.json, when the config declares none


def _resolve_channels(data, declared: dataset_json_module.Declared | None) -> None:
  """data.channels (the channel names, in order) and, for one channel, data.modality."""
  named = declared.channels if declared is not None else None
  where = declared.path if declared is not None else None
  if data.channels is not None:
    channels = tuple(str(c) for c in data.channels)
    if not channels:
      raise ConfigError('config.data.channels=(); expected the name of each channel')
    if named is not None and channels != named:
      raise ConfigError(
        f'{where} declares the channels {list(named)} but config.data.channels='
        f"{channels}; leave it unset (None) to use the dataset's"
      )
  elif named is not None:
    channels = named
  else:
    channels = (data.modality or DEFAULT_MODALITY,)
  if len(channels) > 1 and data.modality:
    raise ConfigError(
      f'config.data.modality={data.modality!r} names one channel, but the dataset has '
      f'{len(channels)}: {list(channels)} (each normalized by its name; leave '
      'config.data.modality unset)'
    )
  modality = 'CT' if channels[0].strip().upper() == 'CT' else 'MR'
  if len(channels) == 1 and data.modality and data.modality != modality:
    raise ConfigError(
      f'{where or "config.data.channels"} declares the channel {channels[0]!r} ({modality}) '
      f"but config.data.modality={data.modality!r}; leave config.data.modality unset ('') "
      "to use the dataset's"
    )
  data.channels = channels
  data.modality = modality if len(channels) == 1 else ''


def resolve_settings(data_config: ml_collections.ConfigDict) -> None:
  """Fills config.data.channels, modality, label_values and foreground_labels where unset.

  The msd and nnunet layouts' dataset.json declares the channels (`modality` or
  `channel_names`; each channel is normalized by its name, as nnU-Net reads them: 'CT' as
  CT, any other (MRI, T2, ADC, ...) z-scored as MR) and the label values; other layouts use
  config.data.modality (one channel) or config.data.channels, else CT, and
  config.data.label_values, else {0} and the foreground labels, else
  DEFAULT_LABEL_VALUES. Foreground defaults to every non-zero label value. An explicit
  setting that disagrees with dataset.json raises ConfigError naming the key, as do
  foreground labels that are not label values. Setting a value to what this resolved
  changes nothing, so running it again on its own result is a no-op. Reads dataset.json
  only: cheap enough to run before any volume is read.
  """
  data = data_config
  declared = dataset_json(data)
  _resolve_channels(data, declared)
  labels = declared.label_values if declared is not None else None
  path = declared.path if declared is not None else None
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
    where = f'{path} "labels"' if path else 'config.data.label_values'
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
  """Label value -> name, as dataset.json's "labels" gives them (names made identifiers:
  'left atrium' -> 'left_atrium'); {} for layouts without dataset.json."""
  declared = dataset_json(data_config)
  return {} if declared is None else dict(declared.names)


def declared_regions(data_config: ml_collections.ConfigDict) -> tuple:
  """nnU-Net v2's region labels (name, values) of dataset.json; () for other layouts."""
  declared = dataset_json(data_config)
  return () if declared is None else declared.regions


def _msd_cases(root: pathlib.Path, data_config) -> list[Case]:
  declared = dataset_json(data_config)
  path = declared.path
  if declared.training is None:
    raise DataError(f'{path}: expected a "training" list of {{"image", "label"}} entries')
  cases = []
  for i, entry in enumerate(declared.training):
    if not isinstance(entry, dict) or not {'image', 'label'} <= entry.keys():
      raise DataError(f'{path}: training[{i}] is {entry!r}; expected {{"image": .., "label": ..}}')
    files = {}
    for key in ('image', 'label'):
      file = root / entry[key]
      if not file.is_file():
        raise DataError(f'{file} is listed in {path} (training[{i}].{key}) but does not exist')
      files[key] = file
    if visible(files['image']):
      cases.append(Case(case_id_of(files['image']), (files['image'],), files['label']))
  return cases


def _nnunet_cases(root: pathlib.Path, data_config) -> list[Case]:
  return nnunet_layout.nnunet_cases(root, dataset_json(data_config))


def _kits_cases(root: pathlib.Path, data_config) -> list[Case]:
  cases, unlabelled = [], []
  for folder in sorted(p for p in root.glob('case_*') if p.is_dir()):
    image, label = folder / 'imaging.nii.gz', folder / 'segmentation.nii.gz'
    if not image.is_file():
      raise DataError(f'{image} is missing; the kits19 layout expects {LAYOUTS["kits19"]}')
    if label.is_file():
      cases.append(Case(folder.name, (image,), label))
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
  return [Case(case_id_of(images[n]), (images[n],), labels[n]) for n in sorted(images)]
