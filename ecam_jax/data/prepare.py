"""A run's folder and its data, before any training: the workdir (writable), the dataset
(found, its settings resolved from dataset.json, the splits' sizes checked), then the
preprocessing cache (built by process 0, or reused) and the splits."""

import pathlib

import jax
import ml_collections

from ecam_jax import parallel
from ecam_jax.data import cache as data_cache
from ecam_jax.data import source, splits


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
  """(cache, splits): the preprocessing cache (built by process 0, or reused) and the
  splits, stratified so that val and test get cases with foreground; prints how many
  each split has."""
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
