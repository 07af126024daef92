"""Runs a table's rows: each row an ordinary training run in WORKDIR/<table>/<row>, then
its test-split evaluation, skipping what is done and resuming what was interrupted.

A row is finished when its latest checkpoint is at the end of the run (the data position
in its metadata has covered config.train.epochs, or config.train.max_steps was reached)
and WORKDIR/<table>/<row>/eval/summary.json exists; a row trained but not evaluated is
only evaluated. Training is `train.train_and_evaluate` and evaluation
`evaluate.evaluate_split(config, row_dir, 'best')`, exactly what `ecam_jax.main` runs.
"""

import contextlib
import dataclasses
import pathlib
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from ecam_jax import folder_lock, parallel
from ecam_jax.atomic import remove, write_text_atomic
from ecam_jax.experiments.tables import FIG5_SOURCES, Row, Table
from ecam_jax.models import registry

# What a row is, as the runner and the report see it.
FINISHED, TRAINED, INTERRUPTED, NOT_STARTED = 'finished', 'trained', 'interrupted', 'not started'
RUNNING, UNAVAILABLE, FAILED = 'running', 'unavailable', 'failed'
ERROR_FILE = 'error.txt'

# (variant, recipe) -> the config for them (the config file, the variant, the recipe, the
# CLI overrides).
ConfigFor = Callable[[str, str], ml_collections.ConfigDict]


def table_dir(workdir: pathlib.Path, table: Table) -> pathlib.Path:
  """WORKDIR/table_N (Tables I-V) or WORKDIR/fig4, WORKDIR/fig5."""
  name = table.name if table.name.startswith('fig') else f'table_{table.name}'
  return pathlib.Path(workdir) / name


def run_names(row: Row, seeds: int) -> list[tuple[str, int | None]]:
  """(folder name, seed or None = the config's own) of each run of `row`."""
  if seeds <= 0:
    return [(row.id, None)]
  return [(f'{row.id}_seed{k}', k) for k in range(seeds)]


def available(row: Row) -> bool:
  """Whether the row's variant exists in this installation (ecam_jax.models.registry)."""
  return row.variant in registry.VARIANTS


def row_config(
  config_for: ConfigFor, row: Row, seed: int | None, workdir: pathlib.Path
) -> ml_collections.ConfigDict:
  """The row's config: `config_for(row.variant, row.recipe)` on the table's shared phantom
  (if it uses the phantom), then the row's overrides, then the seed."""
  config = config_for(row.variant, row.recipe)
  shared_phantom(config, workdir)
  with config.unlocked():
    for key, value in row.overrides:
      section, name = key.split('.')
      config[section][name] = value
    if seed is not None:
      config.seed = seed
  return config


def _latest_meta(row_dir: pathlib.Path) -> dict | None:
  """The newest readable latest checkpoint's metadata (read only; no arrays)."""
  folder = row_dir.absolute() / 'checkpoints' / 'latest'
  if not folder.is_dir():
    return None
  for step in sorted((int(p.name) for p in folder.iterdir() if p.name.isdigit()), reverse=True):
    try:
      return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(folder / str(step) / 'meta')
    except Exception:  # noqa: BLE001 (a damaged step: an older one may be whole)
      continue
  return None


def trained(row_dir: pathlib.Path, config: ml_collections.ConfigDict) -> bool:
  """Whether the row's training has reached its end (see the module docstring)."""
  meta = _latest_meta(row_dir)
  if meta is None:
    return False
  if config.train.max_steps and meta['step'] >= config.train.max_steps:
    return True
  return meta['data_batch'] >= meta['steps_per_epoch'] * config.train.epochs


def fold_dirs(row_dir: pathlib.Path, folds: int) -> list[pathlib.Path]:
  """The run folders of a row trained in `folds` folds: ROW/fold_0 ... (evaluate.py's)."""
  return [pathlib.Path(row_dir) / f'fold_{k}' for k in range(folds)]


def summary_path(row_dir: pathlib.Path) -> pathlib.Path:
  """A row's result: its test summary, or for a row trained in folds its out-of-fold one."""
  crossval = pathlib.Path(row_dir) / 'crossval' / 'summary.json'
  return crossval if crossval.is_file() else pathlib.Path(row_dir) / 'eval' / 'summary.json'


def state_of(row_dir: pathlib.Path) -> str:
  """What a row's folder shows, without a config and without waiting: finished (a test
  summary, or an out-of-fold one), running (another runner holds its lock), failed,
  interrupted (checkpoints, no summary), or not started. A row trained in folds shows its
  folds' states: the first of running, failed, interrupted that one of them is, and
  interrupted while some are finished but not all have been scored together."""
  if summary_path(row_dir).is_file():
    return FINISHED
  folds = sorted(p for p in pathlib.Path(row_dir).glob('fold_*') if p.is_dir())
  if folds:
    states = [state_of(f) for f in folds]
    for state in (RUNNING, FAILED, INTERRUPTED, FINISHED):
      if state in states:
        return INTERRUPTED if state == FINISHED else state
    return NOT_STARTED
  if folder_lock.holder(row_dir) is not None:
    return RUNNING
  if (row_dir / ERROR_FILE).is_file():
    return FAILED
  if (row_dir / 'checkpoints').is_dir():
    return INTERRUPTED
  return NOT_STARTED


def _decide(row_dir: pathlib.Path, config: ml_collections.ConfigDict) -> str:
  """With the lock held: FINISHED (nothing to do), TRAINED (evaluate) or NOT_STARTED
  (train, resuming from a checkpoint if there is one, then evaluate)."""
  if not trained(row_dir, config):
    return NOT_STARTED
  return FINISHED if (row_dir / 'eval' / 'summary.json').is_file() else TRAINED


_CODES = (FINISHED, TRAINED, NOT_STARTED, RUNNING)


def _agree(action: str) -> str:
  """Process 0's decision, on every process of a multi-process run."""
  if jax.process_count() == 1:
    return action
  code = _CODES.index(action) if jax.process_index() == 0 else 0
  return _CODES[int(multihost_utils.broadcast_one_to_all(np.int32(code)))]


@dataclasses.dataclass
class Outcome:
  """What the runner did with one run of a row: `action` is 'skipped' (finished before),
  'trained', 'evaluated' (trained before), 'running elsewhere', 'unavailable',
  'interrupted' (a stop request: rerun to resume) or 'failed' (`error`)."""

  name: str
  row_dir: pathlib.Path
  action: str
  error: str = ''


def run_row(
  row_dir: pathlib.Path,
  config: ml_collections.ConfigDict,
  errors: tuple = (),
  allow_changes: bool = False,
) -> Outcome:
  """Trains (or resumes) and evaluates one run unless it is finished or another runner
  holds it. An exception in `errors` (a user's mistake: a config the checkpoint refuses, a
  data error) is written to ROW/error.txt and returned; any other propagates.
  `allow_changes`: resume although the config differs from the checkpoint's (main's
  --resume_with_changes)."""
  from ecam_jax import evaluate, train  # the heavy part, only when a row runs

  row_dir = pathlib.Path(row_dir).absolute()
  with _lock_on_process0(row_dir) as held:
    action = _agree(_decide(row_dir, config) if held else RUNNING)
    if action == RUNNING:
      return Outcome(row_dir.name, row_dir, 'running elsewhere')
    if action == FINISHED:
      return Outcome(row_dir.name, row_dir, 'skipped')
    try:
      done = 'evaluated'
      if action == NOT_STARTED:
        summary = train.train_and_evaluate(config, str(row_dir), allow_changes=allow_changes)
        if summary.get('interrupted'):
          return Outcome(row_dir.name, row_dir, 'interrupted')
        done = 'trained'
      evaluate.evaluate_split(config, row_dir, 'best')
    except errors as e:
      if jax.process_index() == 0:
        write_text_atomic(row_dir / ERROR_FILE, f'{type(e).__name__}: {e}\n')
      return Outcome(row_dir.name, row_dir, FAILED, str(e))
    if jax.process_index() == 0:
      remove(row_dir / ERROR_FILE)
    return Outcome(row_dir.name, row_dir, done)


@contextlib.contextmanager
def _lock_on_process0(row_dir: pathlib.Path):
  """The row's lock, taken by process 0 only (the others yield True and follow its
  decision through `_agree`)."""
  if jax.process_index() != 0:
    yield True
    return
  with folder_lock.folder_lock(row_dir) as held:
    yield held


def shared_phantom(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """A config on the generated phantom (no data.root) points at WORKDIR/phantom, made
  once for every row and seed (with the config's own seed), so that all runs of a table
  see the same cases and their per-case scores pair up."""
  from ecam_jax.data import phantom

  data = config.data
  if data.root or data.phantom_cases <= 0:
    return
  root = pathlib.Path(workdir).absolute() / 'phantom'
  if jax.process_index() == 0:
    # two runners starting together make it once
    with folder_lock.folder_lock(root.parent, '.phantom.lock', wait=lambda _: None):
      phantom.generate(root, data.phantom_cases, config.seed, size=data.phantom_size)
  parallel.barrier('experiments phantom')
  data.root = str(root)


def source_dir(workdir: pathlib.Path, table: Table, row: Row, name: str) -> pathlib.Path:
  """Where a run of `row` lives: its table's folder; for fig5, the folder of the same run
  in another table when that one is finished (the same variant and config)."""
  from ecam_jax.experiments import tables

  if table.name == 'fig5':
    for other in FIG5_SOURCES.get(row.id, ()):
      candidate = table_dir(workdir, tables.TABLES[other]) / name
      if state_of(candidate) == FINISHED:
        return candidate
  return table_dir(workdir, table) / name


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a table: `row` with `seed` (None: the config's own) in `row_dir`,
  or with `fold` (of `folds`) its cross-validation's fold K in ROW/fold_K (`folder`)."""

  row: Row
  name: str
  seed: int | None
  row_dir: pathlib.Path
  fold: int | None = None
  folds: int = 0

  @property
  def folder(self) -> pathlib.Path:
    return self.row_dir if self.fold is None else fold_dirs(self.row_dir, self.folds)[self.fold]

  @property
  def label(self) -> str:
    """ROW, ROW_seedK, or with folds ROW/fold_K: what --dry_run and the log call it."""
    return self.name if self.fold is None else f'{self.name}/{self.folder.name}'


def runs(
  table: Table, rows: list[Row], workdir: pathlib.Path, seeds: int = 0, folds: int = 0
) -> list[Run]:
  """Every run of `rows`: each seed of each row (one run unless `seeds`), and with `folds`
  each fold of each. Fig. 5 draws one map per network: one run per row, no folds."""
  seeds = 0 if table.name == 'fig5' else seeds
  folds = 0 if table.name.startswith('fig') else folds
  found = []
  for row in rows:
    for name, seed in run_names(row, seeds):
      row_dir = source_dir(workdir, table, row, name)
      found += [Run(row, name, seed, row_dir, k, folds) for k in range(folds)] or [
        Run(row, name, seed, row_dir)
      ]
  return found


def shard(found: list[Run], spec: str) -> list[Run]:
  """The i-th of every n runs (`spec` 'i/n', 0-based; '' = all), so that n runners (the
  tasks of a job array) split them disjointly: one run is a row, a seed of it, or a fold."""
  if not spec:
    return found
  try:
    index, count = (int(v) for v in spec.split('/'))
  except ValueError:
    raise ValueError(f'--shard={spec!r}; expected i/n such as 0/4') from None
  if not 0 <= index < count:
    raise ValueError(f'--shard={spec!r}: i must be in 0..n-1')
  return found[index::count]


def run_table(
  table: Table,
  chosen: list[Run],
  config_for: ConfigFor,
  workdir: pathlib.Path,
  errors: tuple = (),
  report: Callable[[str], None] = parallel.print0,
  allow_changes: bool = False,
) -> list[Outcome]:
  """Runs each of `chosen` in turn (see `run_row`); stops after a run interrupted by a stop
  request (SIGTERM, Ctrl-C), which a rerun resumes. After a fold, the row's folds are scored
  together once all of them are finished, by whichever runner finishes last
  (`score_folds`)."""
  outcomes = []
  for run in chosen:
    if not available(run.row):
      done = [Outcome(run.name, run.folder, UNAVAILABLE)]
    else:
      config = row_config(config_for, run.row, run.seed, workdir)
      if run.fold is None:
        done = [run_row(run.folder, config, errors, allow_changes)]
      else:
        fold = fold_config(config, run.row_dir, run.folds, str(run.fold))
        done = [run_row(run.folder, fold, errors, allow_changes)]
        if done[0].action != 'interrupted':
          done += score_folds(run.row_dir, config, run.folds, errors)
    for outcome in done:
      where = run.name if outcome.name == 'crossval' else run.label
      report(f'{table_dir(workdir, table).name}/{where}: {outcome.action}')
    outcomes += done
    if done[0].action == 'interrupted':
      return outcomes
  return outcomes


def listing(table: Table, chosen: list[Run]) -> list[str]:
  """--dry_run's lines: each of `chosen`, its settings as `ecam_jax.main` takes them, its
  folder and its state."""
  lines = []
  for run in chosen:
    chosen = f'variant={run.row.variant}'
    chosen += '' if run.row.recipe == 'paper' else f',recipe={run.row.recipe}'
    flags = [chosen] + [f'--config.{k}={v}' for k, v in run.row.overrides]
    flags += [] if run.seed is None else [f'--config.seed={run.seed}']
    flags += [] if run.fold is None else [f'--config.data.fold={run.fold}']
    state = state_of(run.folder) if available(run.row) else UNAVAILABLE
    lines.append(f'{run.label}: {" ".join(flags)} -> {run.folder} [{state}]')
  return lines


def fold_config(
  config: ml_collections.ConfigDict, row_dir: pathlib.Path, folds: int, fold: str
) -> ml_collections.ConfigDict:
  """The row's config for fold `fold` of `folds` ('' for scoring them together): the
  row's folds share one cache folder (ROW/cache) and so one splits_final.json. Every row
  on the same data makes the same folds (folds.py: the cases, their foreground and
  data.split_seed decide them), so the rows' out-of-fold scores pair up case by case."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.folds = folds
    config.data.fold = fold
    config.data.cache_dir = str(pathlib.Path(row_dir).absolute() / 'cache')
  return config


def score_folds(
  row_dir: pathlib.Path,
  config: ml_collections.ConfigDict,
  folds: int,
  errors: tuple = (),
) -> list[Outcome]:
  """Once every fold of the row is finished: scores their validation cases together into
  ROW/crossval (`evaluate.evaluate_folds`, as --mode=crossval), under the row's lock, once.
  [] while folds are missing (or another runner is scoring them), else the outcome."""
  from ecam_jax import evaluate

  row_dir = pathlib.Path(row_dir).absolute()
  if not all(state_of(d) == FINISHED for d in fold_dirs(row_dir, folds)):
    return []
  with _lock_on_process0(row_dir) as held:
    todo = held and not (row_dir / 'crossval' / 'summary.json').is_file()
    if _agree(NOT_STARTED if todo else FINISHED) != NOT_STARTED:
      return []
    try:
      evaluate.evaluate_folds(fold_config(config, row_dir, folds, ''), row_dir, 'best')
    except errors as e:
      return [Outcome('crossval', row_dir, FAILED, str(e))]
  return [Outcome('crossval', row_dir, 'scored out of fold')]
