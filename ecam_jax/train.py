"""train_and_evaluate(config, workdir): the whole training run, top to bottom.

Sections: workdir and data (data/prepare.py) -> mesh -> model and state (restored when a
latest checkpoint exists) -> steps, the validator -> loop {step, log, validate,
checkpoint}. Running the same command again resumes where the last checkpoint left off.
"""

import json
import signal
from typing import Any

import jax
import ml_collections
import numpy as np

from ecam_jax import configuration, parallel, resume, scoring, steps, validate
from ecam_jax.atomic import write_json_atomic
from ecam_jax.cadence import Cadence
from ecam_jax.checkpoint import Checkpointing, Checkpoints
from ecam_jax.data import pipeline
from ecam_jax.data.prepare import build_data, prepare_workdir, resolve_data
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
  steps_per_epoch = pipeline.steps_per_epoch(cache, case_splits['train'], config)

  # --- model, state; resume from the latest checkpoint ------------------------------
  model = build_model(config.model, axis_name=parallel.AXIS)
  init_tx, _ = make_optimizer(config.train, 1)  # the state's structure; not the schedule
  state = jax.jit(
    lambda: create_train_state(model, init_tx, config.seed, config.data.image_size),
    out_shardings=parallel.replicated(mesh),
  )()
  restored = ckpts.restore_latest(state, parallel.print0)
  if restored is not None:
    state, saved = restored
  start_step = int(state.step)
  cadence = Cadence.of(config.train, steps_per_epoch, start_step, saved)
  resolved = json.loads(config.to_json_best_effort())  # config.json and each checkpoint
  if jax.process_index() == 0:
    write_json_atomic(workdir / 'config.json', resolved)
  tx, schedule = make_optimizer(config.train, cadence.total_steps)
  saves = Checkpointing(
    ckpts, config.train, cadence, {'steps_per_epoch': steps_per_epoch, 'config': resolved}
  )
  train_iter = pipeline.train_iterator(
    cache,
    case_splits['train'],
    config,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    start_batch=cadence.position(start_step),
    padded_batch=padded_batch,
  )

  # --- steps, compiled before the loop ------------------------------------------------
  # Every process compiles first and then they meet: the first exchange of a collective
  # waits only 30 s for the others on CPU (gloo), less than compile times differ on a busy
  # host; after the barrier the processes run in lockstep.
  size = cache.image_size
  train_spec = {
    'image': ((size, size, cache.channels), np.float32),
    'label': ((size, size, 1), np.uint8),
  }
  train_step = (
    steps.make_train_step(model, tx, schedule, config, mesh)
    .lower(state, parallel.batch_spec(mesh, padded_batch, {**train_spec, 'valid': ((), bool)}))
    .compile()
  )
  validator = validate.Validator(
    build_model(config.model), config, cache, case_splits['val'], mesh, state.variables(), saves
  )
  parallel.barrier('steps compiled')

  monitor = Monitor(workdir, cadence.last_step, start_step)
  if restored is not None:
    monitor.note(f'resumed from step {start_step} of {cadence.total_steps} in {workdir}')
    if changed:
      monitor.note('with config changes: ' + ', '.join(f'{k}={b!r}' for k, _, b in changed))
      monitor.write(start_step, 'resume', {'changed': [k for k, _, _ in changed]})
  window = Window(validator.names, validator.classes)
  step = start_step
  summary: dict[str, Any] = {'total_steps': cadence.total_steps, 'steps_per_epoch': steps_per_epoch}
  with StopRequest() as stop:
    try:
      while step < cadence.last_step:
        state, metrics = train_step(state, parallel.global_batch(mesh, next(train_iter)))
        step += 1
        window.add(metrics)
        if cadence.due(step, steps=config.train.log_every_steps, epochs=1):
          values = window.flush()
          saves.checked(state)
          epoch = cadence.position(step) / steps_per_epoch
          values.update(epoch=epoch, skipped_steps=int(state.skipped))
          monitor.write(step, 'train', values)
          monitor.progress(step, values)
        if cadence.due(step, epochs=config.train.eval_every_epochs):
          validator(state, step, cadence.epoch(step), monitor)
        if saves.after_step(state, step, stop.requested):
          monitor.note(f'stopped at step {step}; run the same command again to resume')
          summary['interrupted'] = True
          break
    finally:
      pipeline.close_iterator(train_iter)
      monitor.close()
      ckpts.close()

  summary.update(step=step, best=validator.best, workdir=str(workdir))
  return summary
