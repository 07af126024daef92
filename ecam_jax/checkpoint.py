"""Checkpoints with orbax: the latest (the whole train state, every few minutes of work)
and the best by the validation score (variables only), kept apart under
WORKDIR/checkpoints.

A run must resume after a hard kill at any instant, so:
- orbax writes each checkpoint into a temporary folder and renames it when complete; a
  temporary folder left by a kill is removed when the managers open;
- saving a step that already exists does nothing: training is deterministic, so the
  state of a step is the same on a rerun (a kill after a best save, then a rerun that
  reaches that step again, used to fail here);
- a latest step that cannot be read (a kill while old checkpoints were being deleted) is
  skipped for the one before it, with a note;
- each checkpoint carries its own metadata (step, data position, config, score), so
  nothing about resuming depends on files that could be out of step with it.
Saves are synchronous: a failure (full disk) surfaces at the save that caused it, with
the folder named. The data iterator needs no state of its own: its position is a global
batch index (pipeline.py), stored in the metadata. `Checkpointing` holds a training run's
rules for when to save.
"""

import errno
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp

from ecam_jax import parallel
from ecam_jax.errors import CheckpointError, NonFiniteLossError
from ecam_jax.state import TrainState

BEST, LATEST = 'best', 'latest'


def _manager(folder: pathlib.Path, keep: int, writer: bool = True) -> ocp.CheckpointManager:
  """A manager of one folder; only a `writer` (the training run) creates the folder and
  removes temporary folders left by a killed save (a reader, e.g. --mode=eval while
  training goes on, must not touch a save in progress)."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep,
    create=writer,
    enable_async_checkpointing=False,
    cleanup_tmp_directories=writer,
    read_only=not writer,
  )
  return ocp.CheckpointManager(folder, options=options)


def _state_target(state: TrainState) -> Any:
  """Where a restore puts the state: the shapes, dtypes and (replicated) sharding of
  `state`, nothing allocated."""
  return parallel.abstract(state, jax.tree.leaves(state)[0].sharding)


class Checkpoints:
  """WORKDIR/checkpoints/{latest, best}."""

  def __init__(self, workdir: str | pathlib.Path, keep: int = 2):
    self.root = pathlib.Path(workdir).absolute() / 'checkpoints'  # orbax needs absolute
    self.latest = _manager(self.root / LATEST, keep)
    self.best = _manager(self.root / BEST, 1)

  def _save(self, manager: ocp.CheckpointManager, step: int, args: ocp.args.Composite) -> bool:
    if step in manager.all_steps():
      return False
    try:
      manager.save(step, args=args, force=True)
      manager.wait_until_finished()
    except OSError as e:
      why = 'the disk is full' if e.errno == errno.ENOSPC else str(e)
      raise CheckpointError(f'could not write a checkpoint to {manager.directory}: {why}') from e
    return True

  def save_latest(self, state: TrainState, meta: dict[str, Any]) -> bool:
    """The whole state with `meta` (JSON: data position, config); False if this step
    was already saved."""
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      meta=ocp.args.JsonSave({'step': int(state.step), **meta}),
    )
    return self._save(self.latest, int(state.step), args)

  def save_best(self, state: TrainState, meta: dict[str, Any]) -> bool:
    """Replaces the best checkpoint (the caller decides that it is better) with the
    variables and `meta` (JSON: the score); False if this step was already saved."""
    args = ocp.args.Composite(
      variables=ocp.args.StandardSave(state.variables()),
      meta=ocp.args.JsonSave({'step': int(state.step), **meta}),
    )
    return self._save(self.best, int(state.step), args)

  def _meta(self, manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def best_meta(self) -> dict[str, Any] | None:
    """The best checkpoint's metadata (its score), or None when there is none."""
    for step in sorted(self.best.all_steps(), reverse=True):
      try:
        return self._meta(self.best, step)
      except Exception:  # noqa: BLE001 (a damaged step: an older one may still be whole)
        continue
    return None

  def restore_latest(
    self, state: TrainState, note: Callable[[str], None] = print
  ) -> tuple[TrainState, dict[str, Any]] | None:
    """(state, meta) of the newest latest checkpoint that can be read, or None when there
    is none. A step that cannot be read is reported through `note` and the one before it
    is tried."""
    target = _state_target(state)
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        restored = self.latest.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
          ),
        )
      except Exception as e:  # noqa: BLE001 (a damaged step: fall back to an older one)
        note(
          f'{self.root / LATEST / str(step)} cannot be read ({type(e).__name__}: {e}); '
          'trying the checkpoint before it'
        )
        continue
      return restored['state'], restored['meta']
    return None

  def latest_meta(self) -> dict[str, Any] | None:
    """The metadata of the newest readable latest checkpoint (cheap: no arrays)."""
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        return self._meta(self.latest, step)
      except Exception:  # noqa: BLE001
        continue
    return None

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def restore_variables(workdir: str | pathlib.Path, which: str, target: dict) -> tuple[dict, dict]:
  """Model variables for inference: `which` is 'best', 'latest' or a checkpoint folder
  (a step folder of either kind). Returns (variables, meta). `target` is the abstract
  variables (jax.ShapeDtypeStruct with shardings); a shape that differs is an error
  naming the checkpoint and the parameter."""
  if which in (BEST, LATEST):
    folder = pathlib.Path(workdir).absolute() / 'checkpoints' / which
    step = _manager(folder, 1, writer=False).latest_step() if folder.is_dir() else None
    if step is None:
      raise CheckpointError(f'no {which} checkpoint in {folder}; train first (--mode=train)')
    path = folder / str(step)
  else:
    path = pathlib.Path(which)
  path = path.absolute()  # orbax reads only absolute paths
  if not (path / 'meta').exists():
    raise CheckpointError(f'{path} is not an ecam-jax checkpoint (no meta/ inside)')
  item = 'variables' if (path / 'variables').exists() else 'state'
  with ocp.StandardCheckpointer() as ckptr:
    # The handler's own metadata: the checkpointer's looks for a step-level file that a
    # CheckpointManager item does not have, and logs a warning on every restore.
    tree = ocp.StandardCheckpointHandler().metadata(path / item)
    tree = getattr(tree, 'tree', tree)
    _check_shapes(path, {k: tree[k] for k in ('params', 'batch_stats')}, target)
    if item == 'variables':
      variables = ckptr.restore(path / item, target)
    else:  # a latest checkpoint holds the whole train state: restore it, keep its variables
      sharding = jax.tree.leaves(target)[0].sharding
      restored = ckptr.restore(path / item, parallel.abstract(tree, sharding))
      variables = {k: restored[k] for k in ('params', 'batch_stats')}
  meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(path / 'meta')
  return variables, meta


def _check_shapes(path: pathlib.Path, saved: Any, target: Any) -> None:
  flat_saved = dict(jax.tree_util.tree_flatten_with_path(saved)[0])
  flat_target = dict(jax.tree_util.tree_flatten_with_path(target)[0])
  names = lambda keys: {jax.tree_util.keystr(k) for k in keys}
  missing = names(flat_target) - names(flat_saved)
  extra = names(flat_saved) - names(flat_target)
  if missing or extra:
    raise CheckpointError(
      f'checkpoint {path} does not fit the config: parameters missing there '
      f'{sorted(missing)[:5]}, unexpected there {sorted(extra)[:5]} (is config.model the '
      'one it was trained with?)'
    )
  for key, value in flat_target.items():
    shape = tuple(getattr(flat_saved[key], 'shape', ()))
    if shape != tuple(value.shape):
      raise CheckpointError(
        f'checkpoint {path}: {jax.tree_util.keystr(key)} has shape {shape}, the config '
        f'expects {tuple(value.shape)} (is config.model the one it was trained with?)'
      )


class Checkpointing:
  """The latest checkpoint of a training run, and when it is written: every
  `train.checkpoint_every_steps` steps and at the run's last step (`Cadence.due`), after
  `train.checkpoint_every_seconds` of work, and when a stop is requested (SIGTERM, Ctrl-C)
  on any process. Several processes agree on time and stop every `train.sync_every_steps`
  steps (one small all-gather). No checkpoint, latest or best, ever holds a state past a
  step whose loss or gradient was not finite when `train.nonfinite` is 'stop': the run
  raises NonFiniteLossError instead."""

  def __init__(self, ckpts: Checkpoints, train_config, cadence, meta: dict[str, Any]):
    """meta: what every latest checkpoint records besides its data position (the config)."""
    self.ckpts, self.cadence, self.meta = ckpts, cadence, meta
    self.every_steps = train_config.checkpoint_every_steps
    self.every_seconds = train_config.checkpoint_every_seconds
    self.sync_every = 1 if jax.process_count() == 1 else train_config.sync_every_steps
    self.stop_on_nonfinite = train_config.nonfinite == 'stop'
    self.last_save = time.monotonic()

  def checked(self, state: TrainState) -> TrainState:
    """`state`, unless it is past a non-finite step and the run must stop."""
    if self.stop_on_nonfinite and int(state.first_nonfinite) >= 0:
      raise NonFiniteLossError(
        f'the loss or gradient was not finite at step {int(state.first_nonfinite) + 1}; the '
        'run stops (config.train.nonfinite=stop). No checkpoint holds a state past that step: '
        f'the latest in {self.ckpts.root} is from before it. Rerunning repeats the same step; '
        'to go on, rerun with --config.train.nonfinite=skip, or with a lower '
        '--config.train.lr or a --config.train.grad_clip_norm and --resume_with_changes.'
      )
    return state

  def save_best(self, state: TrainState, meta: dict[str, Any]) -> None:
    self.ckpts.save_best(self.checked(state), meta)

  def save_latest(self, state: TrainState, step: int) -> None:
    meta = {'data_batch': self.cadence.position(step), **self.meta}
    self.ckpts.save_latest(self.checked(state), meta)
    self.last_save = time.monotonic()

  def after_step(self, state: TrainState, step: int, stop_requested: bool) -> bool:
    """Saves the latest checkpoint if due; True when the run must stop now."""
    due = self.cadence.due(step, steps=self.every_steps)
    if step % self.sync_every and not due:
      return False
    late = time.monotonic() - self.last_save > self.every_seconds
    stopping = parallel.any_process(stop_requested)
    if due or parallel.any_process(late) or stopping:
      self.save_latest(state, step)
    return stopping
