"""Validation during training: every slice of the validation cases through the model,
TP/FP/FN per slice from the devices, then per-volume and per-slice scores computed once
from the counts of all hosts, and the validation loss; and a PNG of a few slices with
overlays."""

import pathlib
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from ecam_jax import overlay, parallel, scoring
from ecam_jax.data.pipeline import eval_batches
from ecam_jax.losses import loss_weights


def slice_table(
  eval_step: Callable, variables: dict, cache, case_ids: list[str], batch_size: int, mesh: Mesh
) -> tuple[np.ndarray, np.ndarray]:
  """Every slice of `case_ids` through the model, on every process, in case and slice order:
  (int64 [N, 5] rows of (case position in case_ids, z, TP, FP, FN), float64 [4] sums over
  the slices of p * y, p, y and the pixels' BCE). `batch_size` is rounded up to fit any
  device and process count; the padding rows are never counted."""
  batch_size = parallel.fit_batch(batch_size, mesh)
  rows, sums = [], np.zeros(4, np.float64)
  batches = eval_batches(
    cache,
    case_ids,
    batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  for batch in batches:
    arrays = parallel.global_batch(mesh, {'image': batch['image'], 'label': batch['label']})
    out = eval_step(variables, arrays)
    counts = parallel.local_rows(out['counts'])
    loss_sums = parallel.local_rows(out['loss_sums'])
    sums += loss_sums[batch['valid']].astype(np.float64).sum(axis=0)
    rows.append(
      np.column_stack([batch['valid'], batch['case'], batch['z'], counts]).astype(np.int64)
    )
  table = parallel.gather_rows(np.concatenate(rows))
  sums = parallel.gather_rows(sums[None]).sum(axis=0)
  return table[table[:, 0] > 0, 1:], sums


def loss(sums: np.ndarray, pixels: int, loss_config) -> float:
  """The training loss's main terms on the whole split (eq. 11, 12, with the run's
  weights; side outputs left out): soft Dice over every pixel of the split and the mean
  BCE, from slice_table's sums. Defined whether or not the split holds foreground, so it
  can select the best checkpoint when the DSC cannot."""
  py, p, y, bce = (float(x) for x in sums)
  w_dice, w_bce, _ = loss_weights(loss_config)
  smooth = float(loss_config.dice_smooth)
  dice = 1.0 - (2.0 * py + smooth) / (p + y + smooth)
  return w_dice * dice + w_bce * bce / max(pixels, 1)


def scores(table: np.ndarray, case_ids: list[str]) -> dict[str, float]:
  """Per volume: ratios from each case's summed counts, mean over cases (val_dsc: the
  model-selection metric); per slice: the mean over slices of the slice ratios."""
  per_case = np.zeros((len(case_ids), 3), np.int64)
  np.add.at(per_case, table[:, 0], table[:, 2:])
  volume = scoring.ratios(per_case[:, 0], per_case[:, 1], per_case[:, 2])
  out = {
    f'{k}': float(np.nanmean(v)) if np.isfinite(v).any() else float('nan')
    for k, v in volume.items()
  }
  slices = scoring.slice_scores_from_counts(table[:, 2], table[:, 3], table[:, 4])
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
  threshold: float = 0.5,
) -> None:
  """Runs the model on the picked slices and writes image + label/prediction contours
  (foreground where the probability is > `threshold`, config.eval.threshold)."""
  if not picks:
    return
  images = np.stack([np.asarray(cache.image(c)[z]) for c, z in picks])[..., None]
  labels = np.stack([np.asarray(cache.label(c)[z]) for c, z in picks])
  padded = parallel.pad_rows(images, mesh.devices.size)
  batch = parallel.global_batch_from_full(mesh, {'image': padded})
  prob = parallel.to_host(predict_step(variables, batch['image']))[: len(picks)]
  if jax.process_index() == 0:
    tiles = [
      overlay.overlay(img[..., 0], lab > 0, p > threshold)
      for img, lab, p in zip(images, labels, prob, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay.write_png(path, overlay.tile(tiles, columns=min(4, len(tiles))))
