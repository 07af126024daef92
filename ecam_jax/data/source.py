"""Where a run's data comes from: the dataset folder config.data.root names, or the
synthetic phantom generated into the workdir (the demo's default)."""

import pathlib

import jax
import ml_collections

from ecam_jax import parallel
from ecam_jax.configuration import ConfigError
from ecam_jax.data import layouts, phantom


def resolve_root(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """Checks config.data.root, or generates the synthetic phantom into WORKDIR/phantom
  (process 0; config.data.phantom_cases > 0 and no root) and points the config at it."""
  data = config.data
  if not data.root and data.phantom_cases > 0:
    root = workdir / 'phantom'
    if jax.process_index() == 0:
      phantom.generate(root, data.phantom_cases, config.seed, size=data.phantom_size)
    parallel.barrier('phantom')
    data.root = str(root)
  root = pathlib.Path(data.root).expanduser() if data.root else None
  if root is None or not root.is_dir():
    where = f'{data.root!r} does not exist' if data.root else 'is not set'
    hint = f' {data.source}' if data.source else ''
    raise ConfigError(
      f'config.data.root {where}.{hint} Expected layout {data.layout!r}: '
      f'{layouts.LAYOUTS.get(data.layout, "?")}.'
    )
