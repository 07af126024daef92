"""Connected components kept in a predicted label map, and how many, chosen from a
cross-validation as nnU-Net chooses its postprocessing.

`keep_components` is the operation (config.eval.keep_components: one value for every class,
or one per class). `Chooser` decides it per class from the out-of-fold predictions of
--mode=crossval as nnU-Net does: first all foreground classes merged keep only their
largest 3-D component when that raises their mean DSC over the cases and lowers no class's
(`keep_foreground`), then each class keeps only its own largest component when that raises
its mean DSC. The decision is written to
WORKDIR/crossval/postprocessing.json and applied by prediction with that WORKDIR's folds
(`decided`) unless config.eval.keep_components is set. No jax here.
"""

import json
import numbers
import os
import pathlib
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ecam_jax import scoring
from ecam_jax.atomic import write_json_atomic
from ecam_jax.errors import DataError

FILE = 'postprocessing.json'


def keep_components(mask: np.ndarray, keep: int | float) -> np.ndarray:
  """The 3-D connected components (26-connectivity) of a binary mask that `keep` selects:
  0 keeps the mask as it is; an integer k >= 1 the k largest components (of equal sizes,
  the first in scan order); a fraction f in (0, 1) every component with at least f times
  the largest one's voxels. Two kidneys, say, are two components: k=1 would delete one."""
  mask = np.asarray(mask, bool)
  if keep == 0:
    return mask
  labelled, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
  if count == 0:
    return mask
  sizes = np.bincount(labelled.ravel(), minlength=count + 1)[1:]
  if isinstance(keep, numbers.Integral):
    kept = np.argsort(-sizes, kind='stable')[:keep]
  else:
    kept = np.flatnonzero(sizes >= keep * sizes.max())
  selected = np.zeros(count + 1, bool)
  selected[kept + 1] = True
  return selected[labelled]


def per_class(keep, num_classes: int) -> tuple[int | float, ...]:
  """config.eval.keep_components (None, one value, or one per class) as one value per
  foreground class (None: 0, every voxel kept)."""
  if keep is None:
    return (0,) * num_classes
  if isinstance(keep, (tuple, list)):
    if len(keep) != num_classes:
      raise DataError(
        f'config.eval.keep_components={tuple(keep)} gives {len(keep)} values for '
        f'{num_classes} foreground classes'
      )
    return tuple(keep)
  return (keep,) * num_classes


def _dsc(pred: np.ndarray, truth: np.ndarray) -> float:
  tp = np.count_nonzero(pred & truth)
  return scoring.ratios(tp, np.count_nonzero(pred) - tp, np.count_nonzero(truth) - tp)['dsc']


def keep_foreground(index: np.ndarray) -> np.ndarray:
  """A label map (output indices, 0 background) with the foreground classes merged: every
  foreground voxel outside the largest 3-D component of all foreground becomes 0."""
  return np.where(keep_components(index > 0, 1), index, 0)


def _mean(values: list[float]) -> float | None:
  finite = [v for v in values if np.isfinite(v)]
  return float(np.mean(finite)) if finite else None


class Chooser:
  """Collects, case by case, each class's DSC as predicted and after each postprocessing
  step; `decide` then chooses as nnU-Net does: first whether to keep only the largest
  component of all foreground classes merged (when that raises their mean DSC and lowers
  no class's; tried with several classes only), then, on that result, for each class
  whether to keep only its own largest component (when that raises its DSC)."""

  def __init__(self, names: Sequence[str], values: Sequence[int]):
    """names: the foreground classes; values: the label value of each in predictions and
    labels alike (a binary run's mask and merged label: 1)."""
    self.names, self.values = list(names), list(values)
    # per class, per case: DSC as predicted, its own largest component, after the merged
    # step, and its own largest component after the merged step
    self.scores: dict[str, list[tuple[float, ...]]] = {name: [] for name in self.names}

  def add(self, pred: np.ndarray, label: np.ndarray) -> None:
    merged = keep_foreground(pred) if len(self.names) > 1 else pred
    for name, value in zip(self.names, self.values, strict=True):
      truth = label == value
      row = []
      for base in (pred, merged):
        mask = base == value
        row += [_dsc(mask, truth), _dsc(keep_components(mask, 1), truth)]
      # A step that removes a class's every false voxel where nothing is labelled leaves
      # nothing to score: DSC 1 (right), not NaN; a class in neither stays NaN throughout.
      row = [v if np.isfinite(v) or not np.isfinite(row[0]) else 1.0 for v in row]
      self.scores[name].append(tuple(row))

  def decide(self) -> dict:
    """{'keep_foreground_component': 0 or 1 (the merged step), 'keep_components': [0 or 1
    per class], 'foreground': the merged step's mean DSCs, 'classes': {name: its mean DSCs
    before and after its own step, the choice}}."""
    mean = {
      name: [_mean([c[i] for c in self.scores[name]]) for i in range(4)] for name in self.names
    }
    present = [name for name in self.names if mean[name][0] is not None]
    before = _mean([mean[n][0] for n in present]) if present else None
    after = _mean([mean[n][2] for n in present]) if present else None
    merged = bool(
      len(self.names) > 1
      and present
      and after > before
      and all(mean[n][2] >= mean[n][0] for n in present)
    )
    keep, classes = [], {}
    for name in self.names:
      as_is, largest = mean[name][2:] if merged else mean[name][:2]
      chosen = bool(as_is is not None and largest > as_is)
      keep.append(int(chosen))
      classes[name] = {  # None: the class is in no case, predicted or labelled
        'dsc_as_predicted': as_is,
        'dsc_largest_component': largest,
        'keep_largest_component': chosen,
        'cases': sum(bool(np.isfinite(c[0])) for c in self.scores[name]),
      }
    return {
      'keep_foreground_component': int(merged),
      'keep_components': keep,
      'foreground': {
        'dsc_as_predicted': before,
        'dsc_largest_component': after,
        'keep_largest_component': merged,
      },
      'classes': classes,
    }


def write(decision: dict, folder: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(folder) / FILE
  write_json_atomic(path, decision)
  return path


def decided(runs: Sequence[str | os.PathLike]) -> tuple[dict | None, pathlib.Path | None]:
  """({'keep_components': per class, 'keep_foreground_component': 0 or 1}, its file) that
  the cross-validation in the runs' common folder chose (WORKDIR/crossval/postprocessing.json
  beside WORKDIR/fold_K), or (None, None) when the runs are not all folds of one WORKDIR or
  it has no decision."""
  parents = {pathlib.Path(r).absolute().parent for r in runs}
  if len(parents) != 1 or not all(pathlib.Path(r).name.startswith('fold_') for r in runs):
    return None, None
  path = parents.pop() / 'crossval' / FILE
  if not path.is_file():
    return None, None
  try:
    stored = json.loads(path.read_text())
    chosen = {
      'keep_components': list(stored['keep_components']),
      'keep_foreground_component': int(stored.get('keep_foreground_component', 0)),
    }
  except (ValueError, KeyError, TypeError):
    raise DataError(
      f'{path} is not a postprocessing decision; delete it and rerun --mode=crossval'
    ) from None
  return chosen, path
