"""train_and_evaluate(config, workdir): the whole training run, top to bottom.

Sections: workdir -> data -> mesh -> model and optimizer -> state (restored when a
latest checkpoint exists) -> steps -> loop {step, log, validate, checkpoint}.
Running the same command again resumes where the last checkpoint left off.
"""

import json
import pathlib
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from ecam_jax import classes, configuration, parallel, resume, scoring, steps, validate
from ecam_jax.atomic import write_json_atomic
from ecam_jax.checkpoint import Checkpoints
from ecam_jax.data import cache as data_cache
from ecam_jax.data import pipeline, source, splits
from ecam_jax.errors import NonFiniteLossError
from ecam_jax.models.build import build_model
from ecam_jax.monitor import Monitor
from ecam_jax.optim import make_optimizer
from ecam_jax.state import create_train_state


class StopRequest:
  """SIGTERM or Ctrl-C asks the loop to save and exit; a second Ctrl-C kills at once."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def prepare_workdir(workdir: str | pathlib.Path) -> pathlib.Path:
  """Creates the workdir and proves it is writable, before any work is done."""
  workdir = pathlib.Path(workdir).expanduser().resolve()
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f'.write-test-{jax.process_index()}'
    probe.write_text('ok')
    probe.unlink()
  except OSError as e:
    raise OSError(e.errno, f'workdir {workdir} is not writable: {e.strerror or e}') from e
  return workdir


def resolve_data(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[str]:
  """The cheap checks, before any volume is read: the data folder (or the generated
  phantom), the layout and its cases, the settings dataset.json decides (filled into
  `config`), and the split sizes against the cases found. Returns the case ids."""
  case_ids = [c.case_id for c in source.resolve_data(config, workdir)]
  splits.check(case_ids, config.data, workdir)
  return case_ids


def build_data(config: ml_collections.ConfigDict, workdir: pathlib.Path):
  """The preprocessing cache (built by process 0, or reused) and the splits, stratified so
  that val and test get cases with foreground; says how many each split has."""
  if jax.process_index() == 0:
    cache = data_cache.prepare_cache(config, workdir)
  parallel.barrier('prepare_cache')
  if jax.process_index() != 0:
    cache = data_cache.prepare_cache(config, workdir, progress=False)
  foreground = cache.foreground_cases()
  case_splits = splits.make_splits(
    cache.case_ids, config.data, workdir, foreground_cases=foreground
  )
  parallel.print0('splits: ' + splits.describe(case_splits, foreground))
  return cache, case_splits


def prepare_data(config: ml_collections.ConfigDict, workdir: pathlib.Path):
  """--mode=prepare: resolve_data, then build_data."""
  resolve_data(config, workdir)
  return build_data(config, workdir)


class Window:
  """The train metrics of the steps since the last log: means of the losses, sums of the
  TP/FP/FN counts (the DSC is made from those once, never averaged over batches). With
  several scored items (`names`), 'dsc/<name>' for each and 'dsc' the mean over `classes`."""

  def __init__(self, names: tuple[str, ...] = ('foreground',), classes: tuple[str, ...] = ()):
    self.pending: list[dict] = []
    self.names, self.classes = names, classes

  def add(self, metrics: dict) -> None:
    self.pending.append(metrics)

  def flush(self) -> dict[str, float]:
    values = jax.device_get(self.pending)
    self.pending = []
    keys = [k for k in values[0] if k not in ('finite', 'counts')]
    out = {k: float(np.mean([v[k] for v in values])) for k in keys}
    counts = np.sum([v['counts'] for v in values], axis=0, dtype=np.int64)  # [C, 3]
    dsc = scoring.ratios(counts[:, 0], counts[:, 1], counts[:, 2])['dsc']
    if len(self.names) == 1:
      out['dsc'] = float(dsc[0])  # NaN: no foreground, none predicted
      return out
    out.update({f'dsc/{name}': float(d) for name, d in zip(self.names, dsc, strict=True)})
    averaged = [d for name, d in zip(self.names, dsc, strict=True) if name in self.classes]
    out['dsc'] = validate.defined_mean(averaged)
    return out


def _nonfinite_error(state, ckpts: Checkpoints) -> NonFiniteLossError:
  return NonFiniteLossError(
    f'the loss or gradient was not finite at step {int(state.first_nonfinite) + 1}; the run '
    'stops (config.train.nonfinite=stop). No checkpoint holds a state past that step: the '
    f'latest in {ckpts.root} is from before it. Rerunning repeats the same step; to go on, '
    'rerun with --config.train.nonfinite=skip, or with a lower --config.train.lr or a '
    '--config.train.grad_clip_norm and --resume_with_changes.'
  )


def _selection(val: dict[str, float], best_by: str = 'mean') -> tuple[str, float]:
  """(metric, value) that picks the best checkpoint, higher is better: the validation DSC
  per volume (config.train.best_by: 'mean', a binary run's one DSC or the mean over the
  classes; or the named class's or region's), or, when it is undefined (the validation
  cases hold none of it and none was predicted), minus the validation loss."""
  suffix = '' if best_by == 'mean' else f'/{best_by}'
  dsc, voxels = val[f'dsc{suffix}'], val[f'label_voxels{suffix}']
  if np.isfinite(dsc) and voxels > 0:
    return f'val_dsc{suffix}', float(dsc)
  return 'neg_val_loss', -float(val['loss'])


def _best_so_far(meta: dict[str, Any] | None) -> dict[str, Any] | None:
  """{'metric', 'value'} of the best checkpoint, read from the checkpoint itself."""
  if meta is None:
    return None
  if 'selection' in meta:
    return meta['selection']
  return {'metric': 'val_dsc', 'value': meta['val_dsc']}  # saved by an earlier version


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, allow_changes: bool = False
) -> dict[str, Any]:
  """Trains config's model on config's data in `workdir`; returns the final summary.

  Rerunning resumes from the latest checkpoint; a config that differs from the one that
  checkpoint was trained with is refused unless `allow_changes` (resume.py says what
  each kind of change then does).
  """
  configuration.check(config)
  workdir = prepare_workdir(workdir)

  # --- data, and what the checkpoint says, checked before any volume is read ------------
  resolve_data(config, workdir)
  mesh = parallel.data_mesh()
  # Any device count: the global batch is padded to split evenly; padding counts nowhere.
  padded_batch = parallel.fit_batch(config.train.batch_size, mesh, 'config.train.batch_size')
  ckpts = Checkpoints(workdir, config.train.keep_checkpoints)
  saved = ckpts.latest_meta()
  where = f'the latest checkpoint in {ckpts.root}'
  changed = resume.check(saved and saved.get('config'), config, where, allow_changes)
  cache, case_splits = build_data(config, workdir)
  train_cases, val_cases = case_splits['train'], case_splits['val']
  steps_per_epoch = pipeline.steps_per_epoch(cache, train_cases, config)

  # --- model, state; resume from the latest checkpoint ------------------------------
  model = build_model(config.model, axis_name=parallel.AXIS)
  eval_model = build_model(config.model)
  init_tx, _ = make_optimizer(config.train, 1)  # the state's structure; not the schedule
  state = jax.jit(
    lambda: create_train_state(model, init_tx, config.seed, config.data.image_size),
    out_shardings=parallel.replicated(mesh),
  )()
  restored = ckpts.restore_latest(state, parallel.print0)
  if restored is not None:
    state, saved = restored
  start_step = int(state.step)
  resolved = json.loads(config.to_json_best_effort())  # config.json and each checkpoint
  if jax.process_index() == 0:
    write_json_atomic(workdir / 'config.json', resolved)
  offset = resume.data_batch(saved, steps_per_epoch) - start_step  # data position - step
  total_steps = steps_per_epoch * config.train.epochs - offset  # the schedule spans these
  last_step = min(total_steps, config.train.max_steps or total_steps)  # where this run ends
  tx, schedule = make_optimizer(config.train, total_steps)
  best = _best_so_far(ckpts.best_meta())
  train_iter = pipeline.train_iterator(
    cache,
    train_cases,
    config,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    start_batch=start_step + offset,
    padded_batch=padded_batch,
  )

  # --- steps, compiled before the loop ------------------------------------------------
  # Every process compiles first and then they meet: the first exchange of a collective
  # waits only 30 s for the others on CPU (gloo), less than compile times differ on a busy
  # host; after the barrier the processes run in lockstep.
  size = cache.image_size
  image = ((size, size, 1), np.float32)
  label = ((size, size, 1), np.uint8)
  overlay_picks = validate.overlay_slices(cache, val_cases, config.train.overlay_slices)
  train_spec = {'image': image, 'label': label, 'valid': ((), bool)}
  train_step = (
    steps.make_train_step(model, tx, schedule, config, mesh)
    .lower(state, parallel.batch_spec(mesh, padded_batch, train_spec))
    .compile()
  )
  eval_rows = parallel.fit_batch(config.eval.batch_size, mesh)
  class_weights = config.loss.class_weights and tuple(map(float, config.loss.class_weights))
  scored_names = tuple(name for name, _ in classes.scored(config))
  eval_step = (
    steps.make_eval_step(
      eval_model, mesh, config.eval.threshold, classes.membership(config), class_weights
    )
    .lower(
      state.variables(), parallel.batch_spec(mesh, eval_rows, {'image': image, 'label': label})
    )
    .compile()
  )
  predict_step = steps.make_predict_step(eval_model, mesh)
  if overlay_picks:
    overlay_rows = -(-len(overlay_picks) // mesh.devices.size) * mesh.devices.size
    predict_step = predict_step.lower(
      state.variables(), parallel.batch_spec(mesh, overlay_rows, {'image': image})['image']
    ).compile()
  parallel.barrier('steps compiled')
  val_pixels = len(cache.slices_of(val_cases)) * cache.image_size**2

  monitor = Monitor(workdir, last_step, start_step)
  if restored is not None:
    monitor.note(f'resumed from step {start_step} of {total_steps} in {workdir}')
    if changed:
      monitor.note('with config changes: ' + ', '.join(f'{k}={b!r}' for k, _, b in changed))
      monitor.write(start_step, 'resume', {'changed': [k for k, _, _ in changed]})
  window = Window(scored_names, classes.class_names(config))
  step, last_save = start_step, time.monotonic()
  summary: dict[str, Any] = {'total_steps': total_steps, 'steps_per_epoch': steps_per_epoch}
  sync_every = 1 if jax.process_count() == 1 else config.train.sync_every_steps
  stop_on_nonfinite = config.train.nonfinite == 'stop'

  def checked(state):
    """`state`, unless it is past a non-finite step and the run must stop: no checkpoint
    may hold such a state."""
    if stop_on_nonfinite and int(state.first_nonfinite) >= 0:
      raise _nonfinite_error(state, ckpts)
    return state

  def save_latest():
    nonlocal last_save
    meta = {
      'data_batch': step + offset,
      'steps_per_epoch': steps_per_epoch,
      'config': resolved,
    }
    ckpts.save_latest(checked(state), meta)
    last_save = time.monotonic()

  with StopRequest() as stop:
    try:
      while step < last_step:
        batch = parallel.global_batch(mesh, next(train_iter))
        state, metrics = train_step(state, batch)
        step += 1
        window.add(metrics)
        position = step + offset  # global batches of the data stream consumed
        end_of_epoch = position % steps_per_epoch == 0

        # --- log ---
        if step % config.train.log_every_steps == 0 or end_of_epoch or step == last_step:
          values = window.flush()
          checked(state)
          values.update(epoch=position / steps_per_epoch, skipped_steps=int(state.skipped))
          monitor.write(step, 'train', values)
          monitor.progress(step, values)

        # --- validate ---
        epoch = position // steps_per_epoch
        if end_of_epoch and (epoch % config.train.eval_every_epochs == 0 or step == total_steps):
          table, sums = validate.slice_table(
            eval_step, state.variables(), cache, val_cases, config.eval.batch_size, mesh
          )
          val = validate.scores(table, val_cases, scored_names, classes.class_names(config))
          val['loss'] = validate.loss(sums, val_pixels, config.loss)
          metric, value = _selection(val, config.train.best_by)
          if best is None or metric != best['metric'] or value > best['value']:
            best = {'metric': metric, 'value': value}
            ckpts.save_best(checked(state), {'selection': best, 'val_dsc': val['dsc']})
          if metric == 'neg_val_loss':
            what = 'foreground' if config.train.best_by == 'mean' else config.train.best_by
            monitor.note(
              f'WARNING: the {len(val_cases)} validation case(s) hold no {what} voxel, so '
              'the validation DSC is undefined; the best checkpoint is chosen by the '
              'validation loss instead. Put cases with foreground in the val split '
              '(config.data.splits_file) for a DSC-based choice.'
            )
          monitor.write(step, 'val', {**val, 'selected_by': metric, 'epoch': epoch})
          per_class = ''.join(
            f', {name} {val[f"dsc/{name}"]:.4f}' for name in scored_names if len(scored_names) > 1
          )
          monitor.note(
            f'epoch {epoch} step {step}: val DSC {val["dsc"]:.4f}{per_class} (per slice '
            f'{val["slice_dsc"]:.4f}), loss {val["loss"]:.4f}; best {metric} {best["value"]:.4f}'
          )
          validate.write_overlay_png(
            predict_step,
            state.variables(),
            cache,
            overlay_picks,
            mesh,
            workdir / 'val_overlays' / f'step_{step:07d}.png',
            config.eval.threshold,
          )

        # --- checkpoint, stop ---
        due = step % config.train.checkpoint_every_steps == 0 or step == last_step
        if step % sync_every == 0 or due:
          late = time.monotonic() - last_save > config.train.checkpoint_every_seconds
          stopping = parallel.any_process(stop.requested)
          if due or parallel.any_process(late) or stopping:
            save_latest()
          if stopping:
            monitor.note(f'stopped at step {step}; run the same command again to resume')
            summary['interrupted'] = True
            break
    finally:
      pipeline.close_iterator(train_iter)
      monitor.close()
      ckpts.close()

  summary.update(step=step, best=best, workdir=str(workdir))
  return summary
