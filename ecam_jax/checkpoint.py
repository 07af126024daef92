"""Checkpoints with orbax: the latest (state + data iterator, every few minutes of work)
and the best by validation DSC (variables only), kept apart under WORKDIR/checkpoints.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so
an interrupted save never looks like a checkpoint. Saves are synchronous: a failure
(full disk) surfaces at the save that caused it, with the folder named.
"""

import errno
import math
import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from ecam_jax import parallel
from ecam_jax.state import TrainState

BEST, LATEST = 'best', 'latest'


def abstract_like(tree: Any) -> Any:
  """Shapes, dtypes and shardings of `tree`: the target a restore fills in place."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _manager(folder: pathlib.Path, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=True, enable_async_checkpointing=False
  )
  return ocp.CheckpointManager(folder, options=options)


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; the message names the folder."""


class Checkpoints:
  """WORKDIR/checkpoints/{latest, best}."""

  def __init__(
    self, workdir: str | pathlib.Path, keep: int = 2, loader: dict[str, int] | None = None
  ):
    """`loader`: what the data iterator's saved state is tied to (worker and process
    counts); a latest checkpoint saved under other values is refused with a message."""
    self.root = pathlib.Path(workdir).absolute() / 'checkpoints'  # orbax needs absolute
    self.loader = loader or {}
    self.latest = _manager(self.root / LATEST, keep)
    self.best = _manager(self.root / BEST, 1)

  def _save(self, manager: ocp.CheckpointManager, step: int, args: ocp.args.Composite) -> None:
    try:
      manager.save(step, args=args, force=True)
      manager.wait_until_finished()
    except OSError as e:
      why = 'the disk is full' if e.errno == errno.ENOSPC else str(e)
      raise CheckpointError(f'could not write a checkpoint to {manager.directory}: {why}') from e

  def save_latest(self, state: TrainState, data_iter: Any, best_dsc: float) -> None:
    step = int(state.step)
    if self.latest.latest_step() == step:
      return
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data_iter=grain.checkpoint.CheckpointSave(data_iter),
      meta=ocp.args.JsonSave(
        {'step': step, 'best_val_dsc': _json_float(best_dsc), 'loader': self.loader}
      ),
    )
    self._save(self.latest, step, args)

  def save_best(self, state: TrainState, val_dsc: float) -> None:
    """Replaces the best checkpoint; the caller decides that `val_dsc` is better."""
    args = ocp.args.Composite(
      variables=ocp.args.StandardSave(state.variables()),
      meta=ocp.args.JsonSave({'step': int(state.step), 'val_dsc': float(val_dsc)}),
    )
    self._save(self.best, int(state.step), args)

  def restore_latest(self, state: TrainState, data_iter: Any) -> tuple[TrainState, float] | None:
    """(state, best DSC so far) from the newest latest checkpoint (`data_iter` is
    restored in place), or None when there is none."""
    step = self.latest.latest_step()
    if step is None:
      return None
    meta = self.latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    saved = meta.get('loader') or {}
    if saved and saved != self.loader:
      differ = ', '.join(f'{k} {saved.get(k)} then, {v} now' for k, v in self.loader.items())
      raise CheckpointError(
        f'{self.root / LATEST / str(step)} holds the data iterator of a run with other '
        f'loader settings ({differ}); resume with the same config.data.num_workers and '
        'process count, or start a new workdir'
      )
    restored = self.latest.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_like(state)),
        data_iter=grain.checkpoint.CheckpointRestore(data_iter),
        meta=ocp.args.JsonRestore(),
      ),
    )
    best = restored['meta']['best_val_dsc']
    return restored['state'], -math.inf if best is None else best

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def _json_float(value: float) -> float | None:
  return value if math.isfinite(value) else None


def restore_variables(workdir: str | pathlib.Path, which: str, target: dict) -> tuple[dict, dict]:
  """Model variables for inference: `which` is 'best', 'latest' or a checkpoint folder
  (a step folder of either kind). Returns (variables, meta). `target` is the abstract
  variables (jax.ShapeDtypeStruct with shardings); a shape that differs is an error
  naming the checkpoint and the parameter."""
  if which in (BEST, LATEST):
    folder = pathlib.Path(workdir) / 'checkpoints' / which
    manager = _manager(folder, 1)
    step = manager.latest_step()
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
