"""Where a run's data comes from, and what it is: the dataset folder config.data.root names
(or the synthetic phantom generated into the workdir, the demo's default), its cases, and
the dataset settings (modality, label values, foreground) its dataset.json declares.

Everything here is cheap (folder listings, dataset.json, no volume read) and runs before
the preprocessing cache is built, so that a wrong path, layout or label setting fails at
once, and it fills config.data in place, once, so that config.json records the values the
run used.
"""

import json
import pathlib

import jax
import ml_collections

from ecam_jax import classes, parallel
from ecam_jax.data import case_files, layouts, phantom
from ecam_jax.errors import ConfigError

# The config.data keys resolve_settings fills in when they are unset.
DATASET_SETTINGS = (
  'modality',
  'channels',
  'label_values',
  'foreground_labels',
  'classes',
  'regions',
  'ct_statistics',
)


def resolve_root(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """Checks config.data.root, or generates the synthetic phantom into WORKDIR/phantom
  (process 0; config.data.phantom_cases > 0 and no root) and points the config at it."""
  data = config.data
  if not data.root and data.phantom_cases > 0:
    root = workdir / 'phantom'
    if jax.process_index() == 0:
      phantom.generate(
        root,
        data.phantom_cases,
        config.seed,
        size=data.phantom_size,
        lesion_prob=data.phantom_lesion_prob,
        lesion_scale=data.phantom_lesion_scale,
        lesion_drop_hu=data.phantom_lesion_drop_hu,
      )
    parallel.barrier('phantom')
    data.root = str(root)
  root = pathlib.Path(data.root).expanduser() if data.root else None
  if root is None or not root.is_dir():
    where = f'{data.root!r} does not exist' if data.root else 'is not set'
    hint = f' {data.source}' if data.source else ''
    raise ConfigError(
      f'config.data.root {where}.{hint} Expected layout {data.layout!r}: '
      f'{layouts.LAYOUTS.get(data.layout, "?")}.'
    )


def resolve_data(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[case_files.Case]:
  """The dataset's labelled cases, sorted by id, with config.data's dataset settings filled
  in (layouts.resolve_settings) and the model's inputs and outputs set from them: what
  training and evaluation call first."""
  resolve_root(config, workdir)
  note = layouts.resolve_layout(config.data)
  if note:
    parallel.print0(note)
  cases = layouts.discover_cases(config.data)
  _resolve_dataset(config)
  return cases


def _resolve_dataset(config: ml_collections.ConfigDict) -> None:
  data = config.data
  layouts.resolve_settings(data)
  if not data.regions and not data.merge_foreground:
    data.regions = classes.format_regions(layouts.declared_regions(data))
  classes.resolve(config, layouts.declared_names(data))
  resolve_inputs(config)


def resolve_inputs(config: ml_collections.ConfigDict) -> None:
  """Sets config.model.in_channels from config.data.channels (it may be left at 1)."""
  channels = len(config.data.channels)
  if config.model.in_channels not in (1, channels):
    raise ConfigError(
      f'config.model.in_channels={config.model.in_channels}; the data has {channels} '
      f'channels ({list(config.data.channels)}) (leave it at 1: set from the data)'
    )
  config.model.in_channels = channels


def resolve_settings(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """Fills config.data's unset dataset settings where there may be no dataset (predict).

  With config.data.root set, as training does; without it, from WORKDIR/config.json: the
  values the run that trained this workdir's model resolved. Raises ConfigError naming
  the key when neither says what the preprocessing needs.
  """
  data = config.data
  if data.root:
    resolve_root(config, workdir)
    layouts.resolve_layout(data)
    _resolve_dataset(config)
    return
  recorded = pathlib.Path(workdir) / 'config.json'
  try:
    trained = json.loads(recorded.read_text()).get('data', {})
  except (OSError, json.JSONDecodeError, AttributeError):
    trained = {}
  for key in DATASET_SETTINGS:
    if data[key] in ('', None) and trained.get(key) not in ('', None):
      value = trained[key]
      data[key] = tuple(value) if isinstance(value, list) else value
  if data.channels is None and data.modality:
    data.channels = (data.modality,)  # recorded by a run from before multi-channel input
  if data.channels is None:
    raise ConfigError(
      f'config.data.channels (or, for one channel, config.data.modality) is unset and '
      f'neither config.data.root nor {recorded} says which it is; set '
      "config.data.modality ('CT' or 'MR'), config.data.channels or config.data.root"
    )
  classes.resolve(config, {})
  resolve_inputs(config)
