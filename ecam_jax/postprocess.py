"""Connected components kept in a predicted label map, and how many, chosen from a
cross-validation as nnU-Net chooses its postprocessing.

`keep_components` is the operation (config.eval.keep_components: one value for every class,
or one per class). `Chooser` decides it per class from the out-of-fold predictions of
--mode=crossval: a class keeps only its largest 3-D component when that raises its mean
DSC over the cases (nnU-Net's rule, per class; nnU-Net first also tries all foreground
classes merged, which is not done here). The decision is written to
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


class Chooser:
  """Collects, case by case, each class's DSC as predicted and with its largest component
  alone; `decide` then keeps the largest component of the classes it helps."""

  def __init__(self, names: Sequence[str], values: Sequence[int]):
    """names: the foreground classes; values: the label value of each in predictions and
    labels alike (a binary run's mask and merged label: 1)."""
    self.names, self.values = list(names), list(values)
    self.scores: dict[str, list[tuple[float, float]]] = {name: [] for name in self.names}

  def add(self, pred: np.ndarray, label: np.ndarray) -> None:
    for name, value in zip(self.names, self.values, strict=True):
      mask, truth = pred == value, label == value
      self.scores[name].append((_dsc(mask, truth), _dsc(keep_components(mask, 1), truth)))

  def decide(self) -> dict:
    """{'keep_components': [0 or 1 per class], 'classes': {name: the two mean DSCs, the
    choice}}: 1 (the largest component) where it raises the mean DSC of the class."""
    keep, classes = [], {}
    for name in self.names:
      pairs = np.asarray(self.scores[name], np.float64).reshape(-1, 2)
      finite = np.isfinite(pairs).all(axis=1)
      before, after = (float(pairs[finite, i].mean()) if finite.any() else None for i in (0, 1))
      largest = bool(finite.any() and after > before)
      keep.append(int(largest))
      classes[name] = {  # None: the class is in no case, predicted or labelled
        'dsc_as_predicted': before,
        'dsc_largest_component': after,
        'keep_largest_component': largest,
        'cases': int(finite.sum()),
      }
    return {'keep_components': keep, 'classes': classes}


def write(decision: dict, folder: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(folder) / FILE
  write_json_atomic(path, decision)
  return path


def decided(runs: Sequence[str | os.PathLike]) -> tuple[list[int] | None, pathlib.Path | None]:
  """(keep_components per class, its file) that the cross-validation in the runs' common
  folder chose (WORKDIR/crossval/postprocessing.json beside WORKDIR/fold_K), or (None,
  None) when the runs are not all folds of one WORKDIR or it has no decision."""
  parents = {pathlib.Path(r).absolute().parent for r in runs}
  if len(parents) != 1 or not all(pathlib.Path(r).name.startswith('fold_') for r in runs):
    return None, None
  path = parents.pop() / 'crossval' / FILE
  if not path.is_file():
    return None, None
  try:
    keep = json.loads(path.read_text())['keep_components']
  except (ValueError, KeyError, TypeError):
    raise DataError(
      f'{path} is not a postprocessing decision; delete it and rerun --mode=crossval'
    ) from None
  return list(keep), path
