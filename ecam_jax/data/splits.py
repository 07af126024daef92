"""Train/val/test splits by case: deterministic from a seed, written to WORKDIR/splits.json.

Splitting by case (never by slice) keeps every slice of a volume in one split. The paper's
sizes are the defaults for its datasets; any other dataset is split by ratios. A user's
splits file (`data.splits_file`: {"train", "val", "test"}, or nnU-Net's splits_final.json,
a list of {"train", "val"} folds of which `data.fold` is used) overrides both. Cases with
foreground and cases without are split separately (stratified), so that val and test hold
foreground whenever the data has enough of it: validation that sees no foreground cannot
select a model. `check` runs the checks that need only the case list, before the
preprocessing cache is built.
"""

import json
import os
import pathlib
from collections.abc import Collection

import ml_collections
import numpy as np

from ecam_jax.atomic import write_json_atomic
from ecam_jax.errors import ConfigError, DataError

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


def _foreground_quota(sizes: tuple[int, int, int], num_foreground: int) -> tuple[int, ...]:
  """How many foreground cases each split gets.

  First one each to train, val and test (in that order, while there are any and the
  split has room): model selection needs foreground in val, and a test score needs it in
  test. The rest, one at a time, to the split whose share of the cases is furthest ahead
  of its share of the foreground, so that the proportions follow the split sizes.
  """
  quota = [0, 0, 0]
  left = num_foreground
  for k, size in enumerate(sizes):
    if left and size > 0:
      quota[k] += 1
      left -= 1
  total = sum(sizes)
  while left:
    room = [k for k in range(3) if quota[k] < sizes[k]]
    k = max(room, key=lambda k: (sizes[k] * num_foreground / total - quota[k], -k))
    quota[k] += 1
    left -= 1
  return tuple(quota)


def _stratified(
  ids: list[str], sizes: tuple[int, int, int], foreground: set[str], seed: int
) -> dict[str, list[str]]:
  """Cases with foreground and cases without, each shuffled by `seed` and cut by the quota.

  Without foreground information this is one shuffle of all cases (how splits were made
  before they were stratified, so such a workdir's splits.json is still recognised).
  """
  with_fg = [i for i in ids if i in foreground]
  without = [i for i in ids if i not in foreground]
  rng = np.random.default_rng(seed)
  with_fg = [with_fg[i] for i in rng.permutation(len(with_fg))]
  without = [without[i] for i in rng.permutation(len(without))]
  quota = _foreground_quota(sizes, len(with_fg))
  fg_bounds = np.cumsum((0, *quota))
  bg_bounds = np.cumsum((0, *(size - q for size, q in zip(sizes, quota, strict=True))))
  return {
    name: sorted(
      with_fg[fg_bounds[k] : fg_bounds[k + 1]] + without[bg_bounds[k] : bg_bounds[k + 1]]
    )
    for k, name in enumerate(SPLITS)
  }


def check(
  case_ids: list[str], data_config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> None:
  """Raises what make_splits would, as far as it can be known before the cache is built:
  data.splits_file checked against the cases, else the split sizes against their number,
  and a WORKDIR/splits.json from an earlier run against both. Reads no volume."""
  ids = sorted(case_ids)
  if data_config.splits_file:
    read_splits_file(data_config.splits_file, ids, data_config.fold)
    return
  sizes = split_sizes(len(ids), data_config)
  path = pathlib.Path(workdir) / 'splits.json'
  if path.is_file():
    previous = _read_previous(path, ids)
    if tuple(len(previous[name]) for name in SPLITS) != sizes:
      raise DataError(_changed(path, f'its split sizes differ from {sizes}'))


def _read_previous(path: pathlib.Path, ids: list[str]) -> dict[str, list[str]]:
  """WORKDIR/splits.json of an earlier run: a partition of exactly these cases."""
  try:
    previous = read_splits_file(path, ids)
  except DataError as e:
    raise DataError(_changed(path, str(e))) from None
  missing = set(ids) - {i for name in SPLITS for i in previous[name]}
  if missing:
    raise DataError(_changed(path, f'{len(missing)} cases are new (e.g. {min(missing)!r})'))
  return previous


def _changed(path: pathlib.Path, why: str) -> str:
  return (
    f'{path} holds other splits than config gives now ({why}; the cases, '
    'config.data.split_seed or the split sizes changed); use a new workdir, delete the '
    f'file, or set config.data.splits_file={str(path)!r} to keep it'
  )


def make_splits(
  case_ids: list[str],
  data_config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  foreground_cases: Collection[str] = (),
) -> dict[str, list[str]]:
  """{'train', 'val', 'test'} -> sorted case ids; also written to WORKDIR/splits.json.

  foreground_cases: the ids of cases with any foreground voxel. They are spread over the
  splits in proportion to the split sizes, with at least one in val and one in test when
  there are three or more (see _foreground_quota), so that validation can select a model.
  The same case ids, foreground, sizes and data.split_seed give the same splits, whatever
  order the filesystem listed the cases in. A WORKDIR/splits.json from an earlier run is
  kept (a resumed run trains on the same cases, also one split before stratification);
  one that this config could not have made raises, so a resumed run never trains on
  another run's test cases.
  """
  ids = sorted(case_ids)
  path = pathlib.Path(workdir) / 'splits.json'
  if data_config.splits_file:
    splits = read_splits_file(data_config.splits_file, ids, data_config.fold)
    user_file = pathlib.Path(data_config.splits_file)
    if path.is_file() and user_file != path and _read_json(path) != splits:
      raise DataError(_changed(path, f'config.data.splits_file is {data_config.splits_file}'))
  else:
    check(ids, data_config, workdir)
    sizes = split_sizes(len(ids), data_config)
    seed = int(data_config.split_seed)
    splits = _stratified(ids, sizes, set(foreground_cases), seed)
    if path.is_file():
      previous = _read_json(path)
      if previous not in (splits, _stratified(ids, sizes, set(), seed)):
        raise DataError(_changed(path, 'the same sizes, other cases in them'))
      splits = previous
  write_json_atomic(path, splits)
  return splits


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError, UnicodeDecodeError):
    return None


def describe(splits: dict[str, list[str]], foreground_cases: Collection[str]) -> str:
  """One line for the start of a run: 'train 8 cases (3 with foreground), val 2 (1), test 2 (1)'."""
  foreground = set(foreground_cases)
  parts = []
  for name in SPLITS:
    ids = splits.get(name, [])
    count = sum(i in foreground for i in ids)
    parts.append(
      f'{name} {len(ids)} cases ({count} with foreground)'
      if name == SPLITS[0]
      else f'{name} {len(ids)} ({count})'
    )
  return ', '.join(parts)


def read_splits_file(
  path: str | os.PathLike, case_ids: list[str], fold: int = 0
) -> dict[str, list[str]]:
  """A user's splits.json, checked against the cases found: {"train", "val", "test"}, or
  nnU-Net's splits_final.json (a list of {"train", "val"}, one per fold; fold `fold` is
  read, its test split empty)."""
  path = pathlib.Path(path)
  try:
    raw = json.loads(path.read_text())
  except FileNotFoundError:
    raise DataError(f'config.data.splits_file: {path} does not exist') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f'{path} is not valid JSON ({e})') from None
  expected = (
    'a JSON object {"train": [ids], "val": [ids], "test": [ids]}, or a list of '
    '{"train": [ids], "val": [ids]} folds (nnU-Net\'s splits_final.json)'
  )
  if isinstance(raw, list):
    if not 0 <= fold < len(raw):
      raise DataError(
        f'{path} holds {len(raw)} folds; config.data.fold={fold} is not one of them '
        f'(0 .. {len(raw) - 1})'
      )
    raw = raw[fold]
    if not (isinstance(raw, dict) and set(raw) == {'train', 'val'}):
      raise DataError(f'{path}: fold {fold} is {str(raw)[:80]}; expected {expected}')
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
