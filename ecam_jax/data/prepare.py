"""A run's folder and its data, before any training: the workdir (writable), the dataset
(found, its settings resolved from dataset.json, the splits' sizes checked), then the
preprocessing cache (built by process 0, or reused) and the splits."""

import pathlib

import jax
import ml_collections

from ecam_jax import parallel
from ecam_jax.data import cache as data_cache
from ecam_jax.data import source, split_report, splits


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
  cases = source.resolve_data(config, workdir)
  held_out = [c.case_id for c in cases if c.held_out]
  splits.check([c.case_id for c in cases], config.data, workdir, held_out)
  return [c.case_id for c in cases]


def build_data(config: ml_collections.ConfigDict, workdir: pathlib.Path):
  """(cache, splits): the preprocessing cache (built by process 0, or reused) and the
  splits (splits.py); prints each split's share of the foreground, and warns when training
  or validation hold too little of it (split_report.py)."""
  if jax.process_index() == 0:
    cache = data_cache.prepare_cache(config, workdir)
  parallel.barrier('prepare_cache')
  if jax.process_index() != 0:
    cache = data_cache.prepare_cache(config, workdir, progress=False)
  amounts = cache.foreground_amounts()
  case_splits = splits.make_splits(cache.case_ids, config.data, workdir, amounts, cache.held_out)
  parallel.print0('splits: ' + split_report.describe(case_splits, amounts))
  voxels = len(cache.index.case) * cache.image_size**2
  for line in split_report.warnings(case_splits, amounts, config.data, voxels):
    parallel.print0(line)
  return cache, case_splits


def prepare_data(config: ml_collections.ConfigDict, workdir: pathlib.Path):
  """--mode=prepare: resolve_data, then build_data."""
  resolve_data(config, workdir)
  return build_data(config, workdir)
