"""Validation during training: every slice of the validation cases through the model,
TP/FP/FN per slice from the devices, then per-volume and per-slice scores (model.md)
computed once from the counts of all hosts; and a PNG of a few slices with overlays."""

import pathlib
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from ecam_jax import evaluate, overlay, parallel
from ecam_jax.data.pipeline import eval_batches


def slice_table(
  eval_step: Callable, variables: dict, cache, case_ids: list[str], batch_size: int, mesh: Mesh
) -> np.ndarray:
  """int64 [N, 5]: (case position in case_ids, z, TP, FP, FN) of every slice, on every
  process, in case and slice order."""
  rows = []
  batches = eval_batches(
    cache,
    case_ids,
    batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  for batch in batches:
    arrays = parallel.global_batch(mesh, {'image': batch['image'], 'label': batch['label']})
    counts = parallel.local_rows(eval_step(variables, arrays))
    rows.append(
      np.column_stack([batch['valid'], batch['case'], batch['z'], counts]).astype(np.int64)
    )
  table = parallel.gather_rows(np.concatenate(rows))
  return table[table[:, 0] > 0, 1:]


def scores(table: np.ndarray, case_ids: list[str]) -> dict[str, float]:
  """Per volume: ratios from each case's summed counts, mean over cases (val_dsc: the
  model-selection metric); per slice: the mean over slices of the slice ratios."""
  per_case = np.zeros((len(case_ids), 3), np.int64)
  np.add.at(per_case, table[:, 0], table[:, 2:])
  volume = evaluate.ratios(per_case[:, 0], per_case[:, 1], per_case[:, 2])
  out = {
    f'{k}': float(np.nanmean(v)) if np.isfinite(v).any() else float('nan')
    for k, v in volume.items()
  }
  slices = evaluate.slice_scores_from_counts(table[:, 2], table[:, 3], table[:, 4])
  out.update({k: float(v) for k, v in slices.items()})
  return out


def overlay_slices(cache, case_ids: list[str], count: int) -> list[tuple[str, int]]:
  """Up to `count` (case, z) pairs to draw: the slice with the most foreground of each
  case, cases in order, then the next-largest slices."""
  picks = []
  for rank in range(count):
    for case in case_ids:
      areas = np.asarray(cache.label(case)).sum(axis=(1, 2))
      order = np.argsort(-areas, kind='stable')
      if rank < len(order):
        picks.append((case, int(order[rank])))
      if len(picks) == count:
        return picks
  return picks


def write_overlay_png(
  predict_step: Callable,
  variables: dict,
  cache,
  picks: list[tuple[str, int]],
  mesh: Mesh,
  path: pathlib.Path,
) -> None:
  """Runs the model on the picked slices and writes image + label/prediction contours."""
  if not picks:
    return
  images = np.stack([np.asarray(cache.image(c)[z]) for c, z in picks])[..., None]
  labels = np.stack([np.asarray(cache.label(c)[z]) for c, z in picks])
  padded = parallel.pad_rows(images, mesh.devices.size)
  batch = parallel.global_batch_from_full(mesh, {'image': padded})
  prob = parallel.to_host(predict_step(variables, batch['image']))[: len(picks)]
  if jax.process_index() == 0:
    tiles = [
      overlay.overlay(img[..., 0], lab > 0, p > 0.5)
      for img, lab, p in zip(images, labels, prob, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay.write_png(path, overlay.tile(tiles, columns=min(4, len(tiles))))
