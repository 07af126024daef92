"""train_and_evaluate(config, workdir): the whole training run, top to bottom.

Sections: workdir -> data -> mesh -> model and optimizer -> state (restored when a
latest checkpoint exists) -> steps -> loop {step, log, validate, checkpoint}.
Running the same command again resumes where the last checkpoint left off.
"""

import json
import math
import pathlib
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from ecam_jax import configuration, parallel, steps, validate
from ecam_jax.atomic import write_json_atomic
from ecam_jax.checkpoint import Checkpoints
from ecam_jax.data import cache as data_cache
from ecam_jax.data import pipeline, source, splits
from ecam_jax.models import build_model
from ecam_jax.monitor import Monitor
from ecam_jax.optim import make_optimizer
from ecam_jax.state import create_train_state


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient was not finite and config.train.nonfinite='stop'."""


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


def prepare_data(config: ml_collections.ConfigDict, workdir: pathlib.Path):
  """The preprocessing cache (built by process 0, or reused) and the case splits."""
  source.resolve_root(config, workdir)
  if jax.process_index() == 0:
    cache = data_cache.prepare_cache(config, workdir)
  parallel.barrier('prepare_cache')
  if jax.process_index() != 0:
    cache = data_cache.prepare_cache(config, workdir, progress=False)
  case_splits = splits.make_splits(cache.case_ids, config.data, workdir)
  return cache, case_splits


def _mean_metrics(pending: list[dict]) -> dict[str, float]:
  values = jax.device_get(pending)
  keys = [k for k in values[0] if k != 'finite']
  return {k: float(np.mean([v[k] for v in values])) for k in keys}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains config's model on config's data in `workdir`; returns the final summary."""
  configuration.validate(config)
  workdir = prepare_workdir(workdir)

  # --- data -------------------------------------------------------------------
  cache, case_splits = prepare_data(config, workdir)
  if jax.process_index() == 0:
    write_json_atomic(workdir / 'config.json', json.loads(config.to_json_best_effort()))
  train_cases, val_cases = case_splits['train'], case_splits['val']

  # --- mesh, model, optimizer ---------------------------------------------------
  mesh = parallel.data_mesh()
  parallel.check_batch_size(config.train.batch_size, mesh)
  steps_per_epoch = pipeline.steps_per_epoch(cache, train_cases, config)
  total_steps = steps_per_epoch * config.train.epochs  # the schedule spans these
  last_step = min(total_steps, config.train.max_steps or total_steps)  # where this run ends
  model = build_model(config.model, axis_name=parallel.AXIS)
  eval_model = build_model(config.model)
  tx, schedule = make_optimizer(config.train, total_steps)

  # --- state, data iterator, resume ---------------------------------------------
  state = jax.jit(
    lambda: create_train_state(model, tx, config.seed, config.data.image_size),
    out_shardings=parallel.replicated(mesh),
  )()
  train_iter = pipeline.train_iterator(
    cache,
    train_cases,
    config,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  loader = {'num_workers': config.data.num_workers, 'processes': jax.process_count()}
  ckpts = Checkpoints(workdir, config.train.keep_checkpoints, loader)
  best_dsc = -math.inf
  restored = ckpts.restore_latest(state, train_iter)
  if restored is not None:
    state, best_dsc = restored
  start_step = int(state.step)

  # --- steps -------------------------------------------------------------------
  train_step = steps.make_train_step(model, tx, schedule, config, mesh)
  eval_step = steps.make_eval_step(eval_model, mesh)
  predict_step = steps.make_predict_step(eval_model, mesh)
  overlay_picks = validate.overlay_slices(cache, val_cases, config.train.overlay_slices)

  monitor = Monitor(workdir, last_step, start_step)
  if restored is not None:
    monitor.note(f'resumed from step {start_step} of {total_steps} in {workdir}')
  last_save, pending, step = time.monotonic(), [], start_step
  summary: dict[str, Any] = {'total_steps': total_steps, 'steps_per_epoch': steps_per_epoch}
  sync_every = 1 if jax.process_count() == 1 else max(1, min(config.train.log_every_steps, 10))

  def save_latest():
    nonlocal last_save
    ckpts.save_latest(state, train_iter, best_dsc)
    last_save = time.monotonic()

  with StopRequest() as stop:
    try:
      while step < last_step:
        batch = parallel.global_batch(mesh, next(train_iter))
        state, metrics = train_step(state, batch)
        step += 1
        pending.append(metrics)
        end_of_epoch = step % steps_per_epoch == 0

        # --- log ---
        if step % config.train.log_every_steps == 0 or end_of_epoch or step == last_step:
          values = _mean_metrics(pending)
          pending = []
          first_bad, skipped = (int(x) for x in (state.first_nonfinite, state.skipped))
          if first_bad >= 0 and config.train.nonfinite == 'stop':
            raise NonFiniteLossError(
              f'the loss or gradient was not finite at step {first_bad + 1}; the run stops '
              f'(config.train.nonfinite=stop). The state before that step is intact; the '
              f'latest checkpoint in {ckpts.root} resumes from before it. Try a lower '
              'config.train.lr or config.train.grad_clip_norm, or nonfinite=skip.'
            )
          values.update(epoch=step / steps_per_epoch, skipped_steps=skipped)
          monitor.write(step, 'train', values)
          monitor.progress(step, values)

        # --- validate ---
        epoch = step // steps_per_epoch
        if end_of_epoch and (epoch % config.train.eval_every_epochs == 0 or step == total_steps):
          val = validate.scores(
            validate.slice_table(
              eval_step, state.variables(), cache, val_cases, config.eval.batch_size, mesh
            ),
            val_cases,
          )
          improved = np.isfinite(val['dsc']) and val['dsc'] > best_dsc
          if improved:
            best_dsc = val['dsc']
            ckpts.save_best(state, best_dsc)
          monitor.write(step, 'val', {**val, 'best_dsc': best_dsc, 'epoch': epoch})
          monitor.note(
            f'epoch {epoch} step {step}: val DSC {val["dsc"]:.4f} (per slice '
            f'{val["slice_dsc"]:.4f}), best {best_dsc:.4f}'
          )
          validate.write_overlay_png(
            predict_step,
            state.variables(),
            cache,
            overlay_picks,
            mesh,
            workdir / 'val_overlays' / f'step_{step:07d}.png',
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
      monitor.close()
      ckpts.close()

  summary.update(step=step, best_val_dsc=best_dsc, workdir=str(workdir))
  return summary
