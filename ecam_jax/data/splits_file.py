"""Reading a splits file, checked against the cases found: a user's (data.splits_file), a
run's own WORKDIR/splits.json, or nnU-Net's splits_final.json of folds."""

import os
import pathlib

from ecam_jax.data import folds
from ecam_jax.errors import DataError

SPLITS = ('train', 'val', 'test')


def read_splits_file(
  path: str | os.PathLike, case_ids: list[str], fold: str = '', *, run_file: bool = False
) -> dict[str, list[str]]:
  """A splits file, checked against the cases found: {"train", "val", "test"} (`fold` must
  be ''), or a list of {"train", "val"} folds (nnU-Net's splits_final.json, each fold
  optionally with "test") of which `fold` is read: '0', '1', ... or 'all' (train and
  validate on every case of fold 0's train and val, as nnU-Net's fold all does).
  run_file: `path` is a run's own splits.json, whose val may be its train (fold all)."""
  path = pathlib.Path(path)
  raw = folds.load(path)
  expected = (
    'a JSON object {"train": [ids], "val": [ids], "test": [ids]}, or a list of '
    '{"train": [ids], "val": [ids]} folds (nnU-Net\'s splits_final.json)'
  )
  if isinstance(raw, list):
    index = folds.fold_index(fold, len(raw), path)
    raw = raw[index or 0]
    if not (isinstance(raw, dict) and {'train', 'val'} <= set(raw) <= set(SPLITS)):
      raise DataError(f'{path}: fold {index or 0} is {str(raw)[:80]}; expected {expected}')
    if index is None and isinstance(raw['train'], list) and isinstance(raw['val'], list):
      every = raw['train'] + [c for c in raw['val'] if c not in raw['train']]
      raw = {'train': every, 'val': every, 'test': raw.get('test', [])}
  elif fold:
    raise DataError(
      f'{path} holds one split, not folds; config.data.fold={fold!r} needs a list of folds '
      "(set it to '' to use this file's split)"
    )
  if not isinstance(raw, dict) or not set(raw) <= set(SPLITS):
    raise DataError(f'{path}: expected {expected}')
  known, seen, splits = set(case_ids), {}, {}
  # fold all (here or in a run's splits.json) validates on exactly the training cases
  all_fold = (fold == 'all' or run_file) and raw.get('val') == raw.get('train')
  for name in SPLITS:
    ids = raw.get(name, [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
      raise DataError(f'{path}: "{name}" is not a list of case ids; expected {expected}')
    for case_id in ids:
      if case_id not in known:
        raise DataError(
          f'{path}: {name} case {case_id!r} is not among the {len(known)} cases found'
        )
      if case_id in seen and not (all_fold and name == 'val'):
        raise DataError(f'{path}: case {case_id!r} is in both {seen[case_id]} and {name}')
      seen.setdefault(case_id, name)
    if not ids and name != 'test':
      raise DataError(f'{path}: the {name} split is empty; train and val need cases')
    splits[name] = sorted(ids)
  return splits
