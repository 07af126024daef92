"""k-fold cross-validation folds by case, stratified by how much foreground each case holds.

Written once per dataset as splits_final.json in nnU-Net's format (a list of
{"train": [ids], "val": [ids]}, one per fold; each fold also lists the held-out "test"
cases, which nnU-Net ignores), so that every fold's run, every table row and nnU-Net itself
can use the same folds. Every case outside the test split is validated in exactly one fold.

Stratification: the cases with foreground, largest first, are dealt to the folds in rounds
of k (each round in an order the seed draws), then the cases without foreground are dealt
to the folds with the fewest cases. Fold sizes differ by at most one; every fold gets its
share of large and small foreground cases, so no fold's training loses most of it unless a
single case holds most of the dataset's foreground.
"""

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ecam_jax.atomic import write_json_atomic
from ecam_jax.errors import DataError


def make_folds(ids: list[str], voxels: Mapping[str, int], k: int, seed: int) -> list[list[str]]:
  """The validation cases of each of `k` folds: a partition of `ids` (sorted lists).

  voxels: the foreground voxels of the cases that have any (others count as none). The
  same ids, voxels, k and seed give the same folds, whatever order `ids` come in."""
  ids = sorted(ids)
  if not 2 <= k <= len(ids):
    raise DataError(
      f'config.data.folds={k}: {len(ids)} cases (outside the test split) cannot make {k} folds; '
      'expected 2 <= folds <= the number of cases'
    )
  rng = np.random.default_rng(seed)
  with_fg = [ids[i] for i in rng.permutation(len(ids)) if voxels.get(ids[i], 0) > 0]
  with_fg.sort(key=lambda c: -voxels[c])  # stable: equal amounts stay in the drawn order
  without = [ids[i] for i in rng.permutation(len(ids)) if voxels.get(ids[i], 0) <= 0]
  folds: list[list[str]] = [[] for _ in range(k)]
  for start in range(0, len(with_fg), k):
    for case, fold in zip(with_fg[start : start + k], rng.permutation(k), strict=False):
      folds[fold].append(case)
  for case in without:
    fold = min(range(k), key=lambda f: (len(folds[f]), f))
    folds[fold].append(case)
  return [sorted(f) for f in folds]


def write(path: str | os.PathLike, vals: list[list[str]], test: list[str]) -> None:
  """splits_final.json: fold f validates vals[f] and trains on the other folds' cases."""
  folds = []
  for f, val in enumerate(vals):
    train = sorted(c for g, other in enumerate(vals) if g != f for c in other)
    folds.append({'train': train, 'val': sorted(val), 'test': sorted(test)})
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  write_json_atomic(path, folds)


def load(path: str | os.PathLike) -> Any:
  """A splits file's JSON (one split, or a list of folds); DataError naming the file when
  it is missing or not JSON."""
  path = pathlib.Path(path)
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise DataError(f'config.data.splits_file: {path} does not exist') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f'{path} is not valid JSON ({e})') from None


def fold_index(fold: str, count: int, path: pathlib.Path) -> int | None:
  """config.data.fold as an index into the `count` folds of `path` (None for 'all')."""
  if fold == 'all':
    return None
  if not fold:
    raise DataError(
      f'{path} holds {count} folds; set config.data.fold to one of 0 .. {count - 1}, or all'
    )
  if not (fold.isdigit() and int(fold) < count):
    raise DataError(
      f'{path} holds {count} folds; config.data.fold={fold!r} is not one of them '
      f'(0 .. {count - 1}, or all)'
    )
  return int(fold)
