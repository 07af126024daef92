"""Train/val/test splits by case: deterministic from a seed, written to WORKDIR/splits.json.

Splitting by case (never by slice) keeps every slice of a volume in one split. Three ways,
the first that the config asks for:
- a user's splits file (`data.splits_file`): {"train", "val", "test"}, or nnU-Net's
  splits_final.json, a list of {"train", "val"} folds (optionally each with the held-out
  "test"), of which `data.fold` is used;
- k-fold cross-validation (`data.fold` = 0 .. data.folds - 1, or 'all'): the folds of
  `folds.py`, made once per dataset into the cache folder's splits_final.json;
- the default train/val/test split: the paper's sizes for its datasets, any other dataset
  by ratios.
A dataset's labelled test set (nnU-Net's imagesTs with labelsTs: `held_out`) is the test
split of the default split and of the folds, and never trained on.
Cases with foreground and cases without are split separately (stratified), so that val
and test hold foreground whenever the data has enough of it: validation that sees no
foreground cannot select a model. Training is served first: when the split leaves it
under half of the foreground voxels, its smallest foreground cases are swapped for the
largest ones elsewhere until it holds most of it, or no swap helps. `check` runs the checks
that need only the case list, before the preprocessing cache is built.
"""

import json
import os
import pathlib
from collections.abc import Collection, Mapping

import ml_collections
import numpy as np

from ecam_jax.atomic import write_json_atomic
from ecam_jax.data import folds
from ecam_jax.data.cache import Amount, cache_path
from ecam_jax.data.splits_file import SPLITS, read_splits_file
from ecam_jax.errors import ConfigError, DataError

# config.data.dataset -> (train, val, test) case counts used in the paper.
PAPER_SIZES = {
  'msd_pancreas': (236, 5, 40),  # of 281
  'tcia_pancreas': (57, 5, 20),  # of 82
  'kits19': (170, 10, 30),  # of 210
}


def split_sizes(
  num_cases: int, data_config: ml_collections.ConfigDict, held_out: int = 0
) -> tuple[int, int, int]:
  """(train, val, test) counts: data.split_sizes, else the paper's, else data.split_ratios.
  With `held_out` cases (a dataset's labelled test set), test is exactly those, and the
  ratios split the others between train and val (test's ratio goes to train)."""
  if data_config.split_sizes is not None:
    sizes, key = tuple(int(s) for s in data_config.split_sizes), 'config.data.split_sizes'
  elif data_config.dataset in PAPER_SIZES:
    sizes = PAPER_SIZES[data_config.dataset]
    key = f"the paper's sizes for config.data.dataset={data_config.dataset!r}"
  elif held_out:
    train_ratio, val_ratio, test_ratio = tuple(data_config.split_ratios)
    train, val, _ = _sizes_from_ratios(
      num_cases - held_out, (train_ratio + test_ratio, val_ratio, 0.0)
    )
    return train, val, held_out
  else:
    return _sizes_from_ratios(num_cases, tuple(data_config.split_ratios))
  if len(sizes) != 3 or min(sizes) < 0 or sum(sizes) != num_cases:
    raise ConfigError(
      f'{key} are {sizes} (sum {sum(sizes)}) but {num_cases} cases were found; set '
      'config.data.split_sizes to three counts that add up to the cases found, or set '
      'config.data.split_ratios (with config.data.dataset="custom"), or give '
      'config.data.splits_file'
    )
  if held_out and sizes[2] != held_out:
    raise ConfigError(
      f'{key} are {sizes}, but the dataset holds out {held_out} labelled test cases '
      f'(labelsTs/), which are the test split; give {held_out} as the test size'
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


Foreground = Mapping[str, Amount] | Collection[str]


def amounts_of(foreground: Foreground) -> dict[str, Amount]:
  """{case id: Amount} of the cases with foreground; a plain collection of ids counts one
  voxel on one slice for each (only which cases have foreground is known)."""
  if isinstance(foreground, Mapping):
    return {c: Amount(*a) for c, a in foreground.items() if a[0] > 0}
  return {c: Amount(1, 1) for c in foreground}


def _stratified(
  ids: list[str], sizes: tuple[int, int, int], foreground: Collection[str], seed: int
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


def _served_first(splits: dict[str, list[str]], amounts: dict[str, Amount]) -> dict[str, list[str]]:
  """`splits` with train's smallest foreground cases swapped for the largest ones of val and
  test while train holds at most half of the foreground voxels and a swap raises its share.
  Each split keeps its number of cases and of foreground cases."""
  out = {name: list(ids) for name, ids in splits.items()}
  where = {c: name for name, ids in out.items() for c in ids}
  total = sum(a.voxels for a in amounts.values())

  def size(case: str) -> tuple[int, str]:
    return amounts[case].voxels, case

  while 2 * sum(amounts[c].voxels for c in out['train'] if c in amounts) <= total:
    inside = [c for c in out['train'] if c in amounts]
    outside = [c for c in amounts if where[c] != 'train']
    if not inside or not outside:
      break
    small, large = min(inside, key=size), max(outside, key=size)
    if amounts[large].voxels <= amounts[small].voxels:
      break
    other = where[large]
    out['train'][out['train'].index(small)] = large
    out[other][out[other].index(large)] = small
    where[large], where[small] = 'train', other
  return {name: sorted(ids) for name, ids in out.items()}


def default_split(
  ids: list[str],
  sizes: tuple[int, int, int],
  amounts: dict[str, Amount],
  seed: int,
  held_out: Collection[str] = (),
) -> dict[str, list[str]]:
  """The train/val/test split of `ids` (sorted) by `sizes`: stratified, training served
  first. `held_out` cases (a dataset's labelled test set) are the test split; the others
  make train and val."""
  if held_out:
    rest = [c for c in ids if c not in set(held_out)]
    split = _stratified(rest, (sizes[0], sizes[1], 0), amounts, seed)
    return {**_served_first(split, amounts), 'test': sorted(held_out)}
  return _served_first(_stratified(ids, sizes, amounts, seed), amounts)


def check(
  case_ids: list[str],
  data_config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  held_out: Collection[str] = (),
) -> None:
  """Raises what make_splits would, as far as it can be known before the cache is built:
  data.splits_file checked against the cases (and against the `held_out` ones: never
  trained on), else the split sizes against their number, the dataset's folds
  (`folds_path`, when data.fold is set and they exist) against both, and a
  WORKDIR/splits.json from an earlier run against them. Reads no volume."""
  ids = sorted(case_ids)
  if data_config.splits_file:
    split = read_splits_file(data_config.splits_file, ids, data_config.fold)
    _check_held_out(split, held_out, data_config.splits_file)
    return
  sizes = split_sizes(len(ids), data_config, len(held_out))
  if data_config.fold:
    _check_folds(ids, data_config, folds_path(data_config, workdir))
    return
  path = pathlib.Path(workdir) / 'splits.json'
  if path.is_file():
    previous = _read_previous(path, ids)
    if tuple(len(previous[name]) for name in SPLITS) != sizes:
      raise DataError(_changed(path, f'its split sizes differ from {sizes}'))


def _check_held_out(
  split: dict[str, list[str]], held_out: Collection[str], path: str | os.PathLike
) -> None:
  for name in ('train', 'val'):
    inside = sorted(set(split[name]) & set(held_out))
    if inside:
      raise DataError(
        f"{path}: {name} holds {inside[0]!r}, a case of the dataset's labelled test set "
        '(labelsTs/), which is held out for testing; leave it out of train and val'
      )


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
    'config.data.split_seed, data.fold or the split sizes changed); use a new workdir, '
    f'delete the file, or set config.data.splits_file={str(path)!r} to keep it'
  )


def make_splits(
  case_ids: list[str],
  data_config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  foreground: Foreground = (),
  held_out: Collection[str] = (),
) -> dict[str, list[str]]:
  """{'train', 'val', 'test'} -> sorted case ids; also written to WORKDIR/splits.json.

  foreground: each case's foreground Amount (or the ids of the cases with foreground).
  They are spread over the splits in proportion to the split sizes, with at least one in
  val and one in test when there are three or more (see _foreground_quota), so that
  validation can select a model, and training served first (_served_first). With data.fold
  set, the run's fold of the dataset's folds (`folds_path`; made when missing). The same
  case ids, foreground, sizes and data.split_seed give the same splits, whatever order the
  filesystem listed the cases in. A WORKDIR/splits.json from an earlier run is kept (a
  resumed run trains on the same cases, also when it was split by an earlier rule); one
  that this config could not have made raises, so a resumed run never trains on another
  run's test cases. `held_out` (a dataset's labelled test set, nnU-Net's labelsTs) are the
  test split of the default split and of the folds, and never in a train or val.
  """
  ids = sorted(case_ids)
  amounts = amounts_of(foreground)
  path = pathlib.Path(workdir) / 'splits.json'
  if data_config.splits_file:
    splits = read_splits_file(data_config.splits_file, ids, data_config.fold)
    _check_held_out(splits, held_out, data_config.splits_file)
    user_file = pathlib.Path(data_config.splits_file)
    if path.is_file() and user_file != path and _read_json(path) != splits:
      raise DataError(_changed(path, f'config.data.splits_file is {data_config.splits_file}'))
  elif data_config.fold:
    check(ids, data_config, workdir, held_out)
    sizes = split_sizes(len(ids), data_config, len(held_out))
    folds_file = folds_path(data_config, workdir)
    splits = _fold_split(ids, sizes, amounts, data_config, folds_file, held_out)
    if path.is_file() and _read_json(path) != splits:
      raise DataError(_changed(path, f'fold {data_config.fold} of {folds_file} differs'))
  else:
    check(ids, data_config, workdir, held_out)
    sizes = split_sizes(len(ids), data_config, len(held_out))
    seed = int(data_config.split_seed)
    splits = default_split(ids, sizes, amounts, seed, held_out)
    if path.is_file():
      previous = _read_json(path)
      earlier_rules = (_stratified(ids, sizes, amounts, seed), _stratified(ids, sizes, (), seed))
      if previous != splits and previous not in earlier_rules:
        raise DataError(_changed(path, 'the same sizes, other cases in them'))
      splits = previous
  write_json_atomic(path, splits)
  return splits


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError, UnicodeDecodeError):
    return None


def folds_path(data_config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> pathlib.Path:
  """Where k-fold runs keep their dataset's folds: splits_final.json in the cache folder
  (config.data.cache_dir, or WORKDIR/cache), beside the preprocessed cases, as nnU-Net keeps
  it beside its preprocessed data."""
  return cache_path(data_config, workdir) / 'splits_final.json'


def _check_folds(
  ids: list[str], data_config: ml_collections.ConfigDict, folds_file: str | os.PathLike
) -> None:
  """A folds file made by an earlier run: data.folds folds of exactly these cases."""
  path = pathlib.Path(folds_file)
  if not path.is_file():
    return
  stored = folds.load(path)
  count = int(data_config.folds)
  if not isinstance(stored, list) or len(stored) != count:
    raise DataError(
      f'{path} holds {f"{len(stored)} folds" if isinstance(stored, list) else "one split"}, not '
      f'config.data.folds={count}; delete it to make {count} folds of these cases, or set '
      'config.data.folds to match'
    )
  split = read_splits_file(path, ids, data_config.fold)
  missing = set(ids) - {c for name in SPLITS for c in split[name]}
  if missing:
    raise DataError(
      f'{path} holds other cases than were found ({len(missing)} are new, e.g. '
      f'{min(missing)!r}); delete it to make folds of these cases'
    )


def _fold_split(
  ids: list[str],
  sizes: tuple[int, int, int],
  amounts: dict[str, Amount],
  data_config: ml_collections.ConfigDict,
  folds_file: str | os.PathLike,
  held_out: Collection[str] = (),
) -> dict[str, list[str]]:
  """This run's fold (data.fold) of `folds_file`, which is made first when missing: the test
  split is the default split's (the `held_out` cases, else its size from split_sizes or
  split_ratios, 0 for none), and the other cases make data.folds folds (folds.make_folds)."""
  path = pathlib.Path(folds_file)
  if not path.is_file():
    seed = int(data_config.split_seed)
    test = default_split(ids, sizes, amounts, seed, held_out)['test']
    rest = [c for c in ids if c not in set(test)]
    voxels = {c: a.voxels for c, a in amounts.items()}
    folds.write(path, folds.make_folds(rest, voxels, int(data_config.folds), seed), test)
  _check_folds(ids, data_config, path)
  return read_splits_file(path, ids, data_config.fold)
