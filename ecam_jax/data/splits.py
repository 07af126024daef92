"""Train/val/test splits by case: deterministic from a seed, written to WORKDIR/splits.json.

Splitting by case (never by slice) keeps every slice of a volume in one split. The paper's
sizes are the defaults for its datasets; any other dataset is split by ratios. A user's
splits file (`data.splits_file`) overrides both.
"""

import json
import os
import pathlib

import ml_collections
import numpy as np

from ecam_jax.atomic import write_json_atomic
from ecam_jax.configuration import ConfigError
from ecam_jax.data.errors import DataError

SPLITS = ('train', 'val', 'test')
# config.data.dataset -> (train, val, test) case counts used in the paper.
PAPER_SIZES = {
  'msd_pancreas': (236, 5, 40),  # of 281
  'tcia_pancreas': (57, 5, 20),  # of 82
  'kits19': (170, 10, 30),  # of 210
}


def split_sizes(num_cases: int, data_config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(train, val, test) counts: data.split_sizes, else the paper's, else data.split_ratios."""
  if data_config.split_sizes is not None:
    sizes, key = tuple(int(s) for s in data_config.split_sizes), 'config.data.split_sizes'
  elif data_config.dataset in PAPER_SIZES:
    sizes = PAPER_SIZES[data_config.dataset]
    key = f"the paper's sizes for config.data.dataset={data_config.dataset!r}"
  else:
    return _sizes_from_ratios(num_cases, tuple(data_config.split_ratios))
  if len(sizes) != 3 or min(sizes) < 0 or sum(sizes) != num_cases:
    raise ConfigError(
      f'{key} are {sizes} (sum {sum(sizes)}) but {num_cases} cases were found; set '
      'config.data.split_sizes to three counts that add up to the cases found, or set '
      'config.data.split_ratios (with config.data.dataset="custom"), or give '
      'config.data.splits_file'
    )
  _check_nonempty(sizes, key)
  return sizes


def _sizes_from_ratios(num_cases: int, ratios: tuple[float, ...]) -> tuple[int, int, int]:
  if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6:
    raise ConfigError(
      f'config.data.split_ratios={ratios}; expected three fractions >= 0 that add up to 1'
    )
  # Every split with a positive ratio gets at least one case; train takes the rest.
  val, test = (max(1, round(r * num_cases)) if r > 0 else 0 for r in ratios[1:])
  sizes = (num_cases - val - test, val, test)
  _check_nonempty(sizes, f'config.data.split_ratios={ratios} with {num_cases} cases')
  return sizes


def _check_nonempty(sizes: tuple[int, ...], source: str) -> None:
  for name, size in zip(SPLITS[:2], sizes, strict=False):
    if size < 1:
      raise ConfigError(f'{source} give(s) an empty {name} split; train and val need cases')


def make_splits(
  case_ids: list[str], data_config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> dict[str, list[str]]:
  """{'train', 'val', 'test'} -> sorted case ids; also written to WORKDIR/splits.json.

  The same case ids, sizes and data.split_seed give the same splits, whatever order the
  filesystem listed the cases in. A WORKDIR/splits.json from an earlier run that
  disagrees raises, so a resumed run never trains on another run's test cases.
  """
  ids = sorted(case_ids)
  if data_config.splits_file:
    splits = read_splits_file(data_config.splits_file, ids)
  else:
    sizes = split_sizes(len(ids), data_config)
    order = np.random.default_rng(data_config.split_seed).permutation(len(ids))
    bounds = np.cumsum((0, *sizes))
    splits = {
      name: sorted(ids[i] for i in order[bounds[k] : bounds[k + 1]])
      for k, name in enumerate(SPLITS)
    }
  path = pathlib.Path(workdir) / 'splits.json'
  if path.is_file() and pathlib.Path(data_config.splits_file or '') != path:
    try:
      previous = json.loads(path.read_text())
    except json.JSONDecodeError:
      previous = None
    if previous != splits:
      raise DataError(
        f'{path} holds other splits than config gives now (cases, config.data.split_seed or '
        'split sizes changed); use a new workdir, delete the file, or set '
        f'config.data.splits_file={str(path)!r} to keep it'
      )
  write_json_atomic(path, splits)
  return splits


def read_splits_file(path: str | os.PathLike, case_ids: list[str]) -> dict[str, list[str]]:
  """A user's splits.json, checked against the cases found."""
  path = pathlib.Path(path)
  try:
    raw = json.loads(path.read_text())
  except FileNotFoundError:
    raise DataError(f'config.data.splits_file: {path} does not exist') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f'{path} is not valid JSON ({e})') from None
  expected = 'a JSON object {"train": [ids], "val": [ids], "test": [ids]}'
  if not isinstance(raw, dict) or not set(raw) <= set(SPLITS):
    raise DataError(f'{path}: expected {expected}')
  known, seen, splits = set(case_ids), {}, {}
  for name in SPLITS:
    ids = raw.get(name, [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
      raise DataError(f'{path}: "{name}" is not a list of case ids; expected {expected}')
    for case_id in ids:
      if case_id not in known:
        raise DataError(
          f'{path}: {name} case {case_id!r} is not among the {len(known)} cases found'
        )
      if case_id in seen:
        raise DataError(f'{path}: case {case_id!r} is in both {seen[case_id]} and {name}')
      seen[case_id] = name
    if not ids and name != 'test':
      raise DataError(f'{path}: the {name} split is empty; train and val need cases')
    splits[name] = sorted(ids)
  return splits
