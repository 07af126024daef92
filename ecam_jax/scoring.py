"""Counts to scores, on the host, in NumPy: the one place where TP/FP/FN become ratios, per
slice or per volume, where masks become surface distances (HD95, ASSD) in millimetres, and
where per-case scores become summaries (summary.json, summary.md). Training (the logged
DSC), validation (model selection) and evaluation (folders, the test split) all score here,
so that every number follows the same conventions:

- Overlap ratios (eq. 14-16) come from TP, FP, FN counts; a ratio whose denominator is 0
  is NaN (undefined), never 0 or 1. Counts are summed first (over devices, hosts, slices
  or log steps) and the ratio taken once: ratios are never averaged where counts can be.
- Surfaces follow medpy: a mask's surface is the mask XOR its binary erosion with the
  face-connected (6-neighbour in 3-D) structure; voxels on the array border count as
  surface. Distances are Euclidean, spacing-aware (`spacing` is per array axis, in mm).
- HD95 = max of the two directed 95th percentiles (medpy's `hd95`, MONAI's
  `compute_hausdorff_distance(percentile=95)`), percentiles with linear interpolation.
- ASSD = mean of the two directed mean distances (medpy's `assd`; MONAI's symmetric
  average surface distance pools both directions instead, which differs when the two
  surfaces have different sizes).
- Both masks empty: HD95 and ASSD are NaN (`surface_status` 'both_empty'). One mask
  empty: they are inf (`surface_status` 'empty_prediction' or 'empty_label'), as MONAI
  does. Means over cases use finite values only and report how many cases entered them.
"""

import json
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from ecam_jax.atomic import write_text_atomic

# summary.md columns: (case key, header, format).
TABLE_COLUMNS = (
  ('dsc', 'DSC', '.4f'),
  ('sensitivity', 'sensitivity', '.4f'),
  ('precision', 'precision', '.4f'),
  ('slice_dsc', 'per-slice DSC', '.4f'),
  ('hd95_mm', 'HD95 mm', '.2f'),
  ('assd_mm', 'ASSD mm', '.2f'),
  ('empty_label_slices', 'empty-label slices', '.1f'),
  ('empty_prediction_slices', 'empty-prediction slices', '.1f'),
)


def confusion_counts(
  pred: np.ndarray, label: np.ndarray, axis: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """TP, FP, FN (int64) of two binary masks of one shape: totals when `axis` is None,
  else one count per slice along `axis` (e.g. axis=0 of a [Z, H, W] volume gives [Z])."""
  pred, label = np.asarray(pred, bool), np.asarray(label, bool)
  if pred.shape != label.shape:
    raise ValueError(f'prediction shape {pred.shape} != label shape {label.shape}')
  if axis is not None:
    axis = axis % pred.ndim
  over = None if axis is None else tuple(a for a in range(pred.ndim) if a != axis)

  def count(mask: np.ndarray) -> np.ndarray:
    return np.count_nonzero(mask, axis=over).astype(np.int64)

  return count(pred & label), count(pred & ~label), count(~pred & label)


def ratios(tp: ArrayLike, fp: ArrayLike, fn: ArrayLike) -> dict[str, np.ndarray | float]:
  """DSC = 2TP/(2TP+FP+FN), sensitivity = TP/(TP+FN), precision = TP/(TP+FP)
  (eq. 14-16), elementwise; NaN where a denominator is 0."""
  tp, fp, fn = (np.asarray(c, np.float64) for c in (tp, fp, fn))

  def divide(num: np.ndarray, den: np.ndarray) -> np.ndarray | float:
    out = np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)
    return float(out) if out.ndim == 0 else out

  return {
    'dsc': divide(2 * tp, 2 * tp + fp + fn),
    'sensitivity': divide(tp, tp + fn),
    'precision': divide(tp, tp + fp),
  }


def _finite_mean(values: ArrayLike) -> tuple[float, int]:
  """Mean of the finite entries and how many there were (NaN, without a warning, if none)."""
  values = np.asarray(values, np.float64)
  finite = values[np.isfinite(values)]
  return (float(finite.mean()) if finite.size else float('nan')), int(finite.size)


def slice_scores(pred: np.ndarray, label: np.ndarray, axis: int = 0) -> dict[str, float | int]:
  """Per-slice scores of a volume, slices along `axis` (see `slice_scores_from_counts`)."""
  return slice_scores_from_counts(*confusion_counts(pred, label, axis=axis))


def slice_scores_from_counts(tp: ArrayLike, fp: ArrayLike, fn: ArrayLike) -> dict[str, float | int]:
  """Per-slice scores from each slice's TP, FP, FN (any shape; flattened).

  `slice_<ratio>` is the mean of that ratio over slices. A slice where prediction and label
  are both empty is left out of every mean and counted in `both_empty_slices`. A ratio that
  is undefined on a slice is left out of that ratio's mean only (a NaN-aware mean): with an
  empty label (`empty_label_slices`, prediction not empty) sensitivity is undefined and DSC
  and precision are 0; with an empty prediction (`empty_prediction_slices`, label not empty)
  precision is undefined and DSC and sensitivity are 0. A mean over no slices is NaN.
  """
  tp, fp, fn = (np.asarray(c, np.int64).ravel() for c in (tp, fp, fn))
  label_empty, pred_empty = tp + fn == 0, tp + fp == 0
  keep = ~(label_empty & pred_empty)
  per_slice = ratios(tp[keep], fp[keep], fn[keep])
  out: dict[str, float | int] = {f'slice_{k}': _finite_mean(v)[0] for k, v in per_slice.items()}
  out['slices'] = int(tp.size)
  out['both_empty_slices'] = int(np.count_nonzero(~keep))
  out['empty_label_slices'] = int(np.count_nonzero(label_empty & ~pred_empty))
  out['empty_prediction_slices'] = int(np.count_nonzero(pred_empty & ~label_empty))
  return out


def _surface(mask: np.ndarray) -> np.ndarray:
  structure = ndimage.generate_binary_structure(mask.ndim, 1)
  return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(
  pred: np.ndarray, label: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
  """Directed surface distances in mm: from each surface voxel of `pred` to the nearest
  surface voxel of `label`, and from each of `label` to `pred`. `spacing` is the voxel size
  along each array axis. Both masks must be non-empty (an empty mask has no surface)."""
  pred, label = np.asarray(pred, bool), np.asarray(label, bool)
  if pred.shape != label.shape:
    raise ValueError(f'prediction shape {pred.shape} != label shape {label.shape}')
  spacing = tuple(float(s) for s in spacing)
  if len(spacing) != pred.ndim or min(spacing) <= 0:
    raise ValueError(f'spacing {spacing} must give one positive size per axis of {pred.shape}')
  if not pred.any() or not label.any():
    raise ValueError('surface distances need a non-empty prediction and a non-empty label')
  # Outside the box around both masks is background, as the erosion's border assumes, and
  # every surface voxel is inside it: cropping changes no distance and saves most of the work.
  box = ndimage.find_objects((pred | label).astype(np.uint8))[0]
  pred_surface, label_surface = _surface(pred[box]), _surface(label[box])
  to_label = ndimage.distance_transform_edt(~label_surface, sampling=spacing)
  to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
  return to_label[pred_surface], to_pred[label_surface]


def surface_scores(
  pred: np.ndarray, label: np.ndarray, spacing: Sequence[float]
) -> dict[str, float | str]:
  """HD95 and ASSD in mm (conventions in the module docstring), with `surface_status`:
  'ok', or why they are NaN ('both_empty') or inf ('empty_prediction', 'empty_label')."""
  pred_any, label_any = bool(np.any(pred)), bool(np.any(label))
  if not pred_any and not label_any:
    return {'hd95_mm': float('nan'), 'assd_mm': float('nan'), 'surface_status': 'both_empty'}
  if not (pred_any and label_any):
    status = 'empty_label' if pred_any else 'empty_prediction'
    return {'hd95_mm': float('inf'), 'assd_mm': float('inf'), 'surface_status': status}
  to_label, to_pred = surface_distances(pred, label, spacing)
  hd95 = max(np.percentile(to_label, 95), np.percentile(to_pred, 95))
  assd = (to_label.mean() + to_pred.mean()) / 2
  return {'hd95_mm': float(hd95), 'assd_mm': float(assd), 'surface_status': 'ok'}


def score_case(
  pred: np.ndarray, label: np.ndarray, spacing: Sequence[float], slice_axis: int = 0
) -> dict[str, float | int | str]:
  """All scores of one case (binary masks of one shape, `spacing` in mm per array axis):
  per-volume ratios from the case's 3-D counts, per-slice means along `slice_axis` with the
  empty-slice counts, HD95 and ASSD, and voxel counts."""
  pred, label = np.asarray(pred, bool), np.asarray(label, bool)
  tp, fp, fn = (int(c) for c in confusion_counts(pred, label))
  return {
    **ratios(tp, fp, fn),
    **slice_scores(pred, label, axis=slice_axis),
    **surface_scores(pred, label, spacing),
    'tp': tp,
    'fp': fp,
    'fn': fn,
    'prediction_voxels': tp + fp,
    'label_voxels': tp + fn,
  }


def summarize(cases: Mapping[str, Mapping[str, float | int | str]]) -> dict:
  """Per-case scores plus, for each numeric score, the mean over cases of its finite values
  (`mean`) and how many cases entered that mean (`count`; `count['cases']` is all cases).
  `pooled` holds the ratios from the counts summed over cases (one global number)."""
  keys = [k for k, v in next(iter(cases.values()), {}).items() if not isinstance(v, str)]
  mean, count = {}, {'cases': len(cases)}
  for key in keys:
    mean[key], count[key] = _finite_mean([case[key] for case in cases.values()])
  totals = {c: sum(int(case[c]) for case in cases.values()) for c in ('tp', 'fp', 'fn')}
  return {'cases': dict(cases), 'mean': mean, 'count': count, 'pooled': ratios(**totals)}


def summarize_classes(
  per_item: Mapping[str, Mapping[str, Mapping]], class_names: Sequence[str]
) -> dict:
  """A multi-class summary from {item name: {case: score_case(...)}} (every item scoring
  the same cases): 'classes' holds each item's `summarize` (classes and regions alike);
  'cases' and 'mean' the mean over `class_names` (the classes, not the regions) of each
  numeric score, per case and of the per-class means (finite values only; 'count' says how
  many classes entered each)."""
  items = {name: summarize(cases) for name, cases in per_item.items()}
  first = next(iter(per_item.values()))
  keys = [k for k, v in next(iter(first.values()), {}).items() if not isinstance(v, str)]
  cases = {
    case: {k: _finite_mean([per_item[n][case][k] for n in class_names])[0] for k in keys}
    for case in first
  }
  mean, count = {}, {'cases': len(first)}
  for key in keys:
    mean[key], count[key] = _finite_mean([items[n]['mean'][key] for n in class_names])
  return {
    'classes': items,
    'averaged_over': list(class_names),
    'cases': cases,
    'mean': mean,
    'count': count,
  }


def _json_safe(value):
  """Non-finite floats become null (strict JSON); `surface_status` says why."""
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value


def _cell(value: float | int, fmt: str) -> str:
  if isinstance(value, int):
    return str(value)
  if np.isnan(value):
    return 'n/a'
  return 'inf' if np.isinf(value) else format(value, fmt)


def markdown_table(summary: dict) -> str:
  """One row per case and a mean row (means over finite values; see `count`); a
  multi-class summary: the mean of every class and region, their mean over the classes,
  then each one's table."""
  if 'classes' in summary:
    return _markdown_classes(summary)
  lines = [
    '| case | ' + ' | '.join(header for _, header, _ in TABLE_COLUMNS) + ' |',
    '|---' * (len(TABLE_COLUMNS) + 1) + '|',
  ]
  for name, scores in [*summary['cases'].items(), ('**mean**', summary['mean'])]:
    cells = [_cell(scores[key], fmt) for key, _, fmt in TABLE_COLUMNS]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  count = summary['count']
  excluded = ', '.join(f'{key}: {count["cases"] - count[key]}' for key, _, _ in TABLE_COLUMNS)
  lines += ['', f'{count["cases"]} cases; left out of a mean (NaN or inf): {excluded}']
  return '\n'.join(lines) + '\n'


def _markdown_classes(summary: dict) -> str:
  items = summary['classes']
  names = summary['averaged_over']
  lines = [
    '| class | ' + ' | '.join(header for _, header, _ in TABLE_COLUMNS) + ' |',
    '|---' * (len(TABLE_COLUMNS) + 1) + '|',
  ]
  rows = [(name if name in names else f'{name} (region)', s['mean']) for name, s in items.items()]
  rows.append((f'**mean of {", ".join(names)}**', summary['mean']))
  for name, scores in rows:
    cells = [_cell(scores[key], fmt) for key, _, fmt in TABLE_COLUMNS]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  lines += ['', f'{summary["count"]["cases"]} cases; each value is a mean over cases.', '']
  for name, item in items.items():
    lines += [f'## {name}', '', markdown_table(item)]
  return '\n'.join(lines)


def write_summary(summary: dict, out_dir: str | os.PathLike) -> None:
  """Writes `summary.json` (non-finite values as null) and `summary.md` into `out_dir`."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  write_text_atomic(
    out / 'summary.json', json.dumps(_json_safe(summary), indent=2, allow_nan=False)
  )
  write_text_atomic(out / 'summary.md', markdown_table(summary))
