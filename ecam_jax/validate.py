"""Validation during training: every slice of the validation cases through the model,
TP/FP/FN per slice from the devices, then per-volume and per-slice scores computed once
from the counts of all hosts, and the validation loss; the best checkpoint's choice; a PNG
of a few slices with overlays. `Validator` does all of it once per validation."""

import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from ecam_jax import classes, overlay, parallel, scoring, steps
from ecam_jax.data.pipeline import eval_batches
from ecam_jax.losses import loss_weights


def slice_table(
  eval_step: Callable, variables: dict, cache, case_ids: list[str], batch_size: int, mesh: Mesh
) -> tuple[np.ndarray, np.ndarray]:
  """Every slice of `case_ids` through the model, on every process, in case and slice order:
  (int64 [N, 2 + 3C] rows of (case position in case_ids, z, then TP, FP, FN of each of the
  C scored items), float64 sums over the slices of the eval step's 'loss_sums').
  `batch_size` is rounded up to fit any device and process count; the padding rows are
  never counted."""
  batch_size = parallel.fit_batch(batch_size, mesh)
  rows, sums = [], 0.0
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
    counts = parallel.local_rows(out['counts']).reshape(len(batch['valid']), -1)
    loss_sums = parallel.local_rows(out['loss_sums'])
    sums += loss_sums[batch['valid']].astype(np.float64).sum(axis=0)
    rows.append(
      np.column_stack([batch['valid'], batch['case'], batch['z'], counts]).astype(np.int64)
    )
  table = parallel.gather_rows(np.concatenate(rows))
  sums = parallel.gather_rows(np.asarray(sums, np.float64)[None]).sum(axis=0)
  return table[table[:, 0] > 0, 1:], sums


def loss(sums: np.ndarray, pixels: int, loss_config) -> float:
  """The training loss's main terms on the whole split (eq. 11, 12, with the run's
  weights; side outputs left out), from slice_table's sums: soft Dice over every pixel of
  the split (for K classes, each class's, averaged with the class weights) and the mean
  BCE (cross-entropy). Defined whether or not the split holds foreground, so it can select
  the best checkpoint when the DSC cannot."""
  w_dice, w_bce, _ = loss_weights(loss_config)
  smooth = float(loss_config.dice_smooth)
  sums = np.asarray(sums, np.float64)
  if len(sums) == 4:  # one logit
    py, p, y, bce = sums
    dice = 1.0 - (2.0 * py + smooth) / (p + y + smooth)
    return float(w_dice * dice + w_bce * bce / max(pixels, 1))
  k = (len(sums) - 2) // 3
  py, p, y = sums[:k], sums[k : 2 * k], sums[2 * k : 3 * k]
  weights = loss_config.class_weights
  weights = np.ones(k) if weights is None else np.asarray(weights[1:], np.float64)
  dice = np.sum(weights * (1.0 - (2.0 * py + smooth) / (p + y + smooth))) / weights.sum()
  return float(w_dice * dice + w_bce * sums[-2] / max(sums[-1], 1e-12))


def defined_mean(values) -> float:
  """The mean of the defined (not NaN) ratios; NaN, without a warning, when none is."""
  values = np.asarray(values, np.float64)
  return float(np.nanmean(values)) if np.isfinite(values).any() else float('nan')


def item_scores(table: np.ndarray, case_ids: list[str], item: int = 0) -> dict[str, float]:
  """Scored item `item`'s (columns 2 + 3 item ..): per volume, ratios from each case's
  summed counts, mean over cases (undefined cases left out); per slice, the mean over
  slices of the slice ratios; and the label voxels."""
  counts = table[:, 2 + 3 * item : 5 + 3 * item]
  per_case = np.zeros((len(case_ids), 3), np.int64)
  np.add.at(per_case, table[:, 0], counts)
  volume = scoring.ratios(per_case[:, 0], per_case[:, 1], per_case[:, 2])
  out = {k: defined_mean(v) for k, v in volume.items()}
  slices = scoring.slice_scores_from_counts(counts[:, 0], counts[:, 1], counts[:, 2])
  out.update({k: float(v) for k, v in slices.items()})
  out['label_voxels'] = int(counts[:, 0].sum() + counts[:, 2].sum())
  return out


# The scores that are averaged over the classes into a multi-class run's headline values.
AVERAGED = ('dsc', 'sensitivity', 'precision', 'slice_dsc', 'slice_sensitivity', 'slice_precision')


def scores(
  table: np.ndarray, case_ids: list[str], names: tuple[str, ...] = ('foreground',), classes=None
) -> dict[str, float]:
  """val_dsc (the model-selection metric) and the rest: a binary run's scores (one item) as
  `item_scores` gives them; with several scored items (`names`, in the table's order),
  '<score>/<name>' for each, and each of AVERAGED as the mean over the classes (`classes`:
  the names averaged, not the regions) where defined, label_voxels their sum."""
  if len(names) == 1:
    return item_scores(table, case_ids)
  out: dict[str, float] = {}
  for item, name in enumerate(names):
    out.update({f'{k}/{name}': v for k, v in item_scores(table, case_ids, item).items()})
  classes = names if classes is None else classes
  for key in AVERAGED:
    out[key] = defined_mean([out[f'{key}/{c}'] for c in classes])
  out['label_voxels'] = sum(out[f'label_voxels/{c}'] for c in classes)
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
  (foreground where the probability is > `threshold`, config.eval.threshold; with several
  classes, where the most probable class is not background: the classes' union)."""
  if not picks:
    return
  images = np.stack([np.asarray(cache.image(c)[z]) for c, z in picks])  # [N, S, S, C]
  labels = np.stack([np.asarray(cache.label(c)[z]) for c, z in picks])
  padded = parallel.pad_rows(images, mesh.devices.size)
  batch = parallel.global_batch_from_full(mesh, {'image': padded})
  prob = parallel.to_host(predict_step(variables, batch['image']))[: len(picks)]
  pred = prob > threshold if prob.ndim == 3 else prob.argmax(axis=-1) > 0
  if jax.process_index() == 0:
    tiles = [
      overlay.overlay(img[..., 0], lab > 0, p)
      for img, lab, p in zip(images, labels, pred, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay.write_png(path, overlay.tile(tiles, columns=min(4, len(tiles))))


def selection(val: dict[str, float], best_by: str = 'mean') -> tuple[str, float]:
  """(metric, value) that picks the best checkpoint, higher is better: the validation DSC
  per volume (config.train.best_by: 'mean', a binary run's one DSC or the mean over the
  classes; or the named class's or region's), or, when it is undefined (the validation
  cases hold none of it and none was predicted), minus the validation loss."""
  suffix = '' if best_by == 'mean' else f'/{best_by}'
  dsc, voxels = val[f'dsc{suffix}'], val[f'label_voxels{suffix}']
  if np.isfinite(dsc) and voxels > 0:
    return f'val_dsc{suffix}', float(dsc)
  return 'neg_val_loss', -float(val['loss'])


def best_so_far(meta: dict[str, Any] | None) -> dict[str, Any] | None:
  """{'metric', 'value'} of the best checkpoint, read from the checkpoint itself."""
  if meta is None:
    return None
  if 'selection' in meta:
    return meta['selection']
  return {'metric': 'val_dsc', 'value': meta['val_dsc']}  # saved by an earlier version


class Validator:
  """Validation during training, built once with its steps compiled: the scores of the
  validation cases (`slice_table`, `scores`, `loss`), the best checkpoint kept by
  config.train.best_by (`selection`), the record in metrics.jsonl and the PNG of a few
  slices (config.train.overlay_slices) in WORKDIR/val_overlays."""

  def __init__(self, model, config, cache, case_ids: list[str], mesh: Mesh, variables, saves):
    """model: built for evaluation; variables: the state's (their shapes compile the steps);
    saves: the run's checkpoint.Checkpointing (the best checkpoint and its rules)."""
    self.config, self.cache, self.case_ids, self.mesh, self.saves = (
      config,
      cache,
      case_ids,
      mesh,
      saves,
    )
    self.names = tuple(name for name, _ in classes.scored(config))
    self.classes = classes.class_names(config)
    self.best = best_so_far(saves.ckpts.best_meta())
    self.pixels = len(cache.slices_of(case_ids)) * cache.image_size**2
    size = cache.image_size
    image, label = ((size, size, cache.channels), np.float32), ((size, size, 1), np.uint8)
    weights = config.loss.class_weights and tuple(map(float, config.loss.class_weights))
    rows = parallel.fit_batch(config.eval.batch_size, mesh)
    self.eval_step = (
      steps.make_eval_step(model, mesh, config.eval.threshold, classes.membership(config), weights)
      .lower(variables, parallel.batch_spec(mesh, rows, {'image': image, 'label': label}))
      .compile()
    )
    self.picks = overlay_slices(cache, case_ids, config.train.overlay_slices)
    self.predict_step = steps.make_predict_step(model, mesh)
    if self.picks:
      rows = -(-len(self.picks) // mesh.devices.size) * mesh.devices.size
      spec = parallel.batch_spec(mesh, rows, {'image': image})['image']
      self.predict_step = self.predict_step.lower(variables, spec).compile()

  def __call__(self, state, step: int, epoch: int, monitor) -> dict[str, float]:
    """Validates `state` after `step` (ending `epoch`): saves it as the best checkpoint
    when it is, records and prints the scores, draws the overlays; returns the scores."""
    config, variables = self.config, state.variables()
    table, sums = slice_table(
      self.eval_step, variables, self.cache, self.case_ids, config.eval.batch_size, self.mesh
    )
    val = scores(table, self.case_ids, self.names, self.classes)
    val['loss'] = loss(sums, self.pixels, config.loss)
    metric, value = selection(val, config.train.best_by)
    best = self.best
    if best is None or metric != best['metric'] or value > best['value']:
      self.best = {'metric': metric, 'value': value}
      self.saves.save_best(state, {'selection': self.best, 'val_dsc': val['dsc']})
    if metric == 'neg_val_loss':
      what = 'foreground' if config.train.best_by == 'mean' else config.train.best_by
      monitor.note(
        f'WARNING: the {len(self.case_ids)} validation case(s) hold no {what} voxel, so the '
        'validation DSC is undefined; the best checkpoint is chosen by the validation loss '
        'instead. Put cases with foreground in the val split (config.data.splits_file) for '
        'a DSC-based choice.'
      )
    monitor.write(step, 'val', {**val, 'selected_by': metric, 'epoch': epoch})
    per_class = ''.join(
      f', {name} {val[f"dsc/{name}"]:.4f}' for name in self.names if len(self.names) > 1
    )
    monitor.note(
      f'epoch {epoch} step {step}: val DSC {val["dsc"]:.4f}{per_class} (per slice '
      f'{val["slice_dsc"]:.4f}), loss {val["loss"]:.4f}; best {metric} {self.best["value"]:.4f}'
    )
    write_overlay_png(
      self.predict_step,
      variables,
      self.cache,
      self.picks,
      self.mesh,
      monitor.path.parent / 'val_overlays' / f'step_{step:07d}.png',
      config.eval.threshold,
    )
    return val
