"""Data parallelism: the one axis name, the device mesh, and host data -> global arrays.

Every device of every process lies on one mesh axis, AXIS, in process-major order, so
that process p's local batch becomes rows [p * local, (p + 1) * local) of the global
batch and device d's shard is rows [d * per_device, (d + 1) * per_device).
"""

import math
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from orbax.checkpoint import multihost as ocp_multihost

from ecam_jax.errors import ConfigError

AXIS = 'data'


def _cluster_detected() -> bool:
  """SLURM with several tasks, Open MPI, or a multi-worker TPU VM: jax finds the rest."""
  env = os.environ
  if int(env.get('SLURM_NTASKS', '1')) > 1 or int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return True
  return ',' in env.get('TPU_WORKER_HOSTNAMES', '')


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  mode: str = 'auto',
  heartbeat_timeout_s: int = 60,
  initialization_timeout_s: int = 300,
) -> None:
  """Starts jax.distributed when this is one process of several; else does nothing.

  Explicit coordinator flags win. mode 'auto' starts it under SLURM (several tasks),
  Open MPI or a multi-worker TPU VM; 'on' always (jax finds the cluster: TPU pods);
  'off' never. A process that stops sending heartbeats for `heartbeat_timeout_s` is
  declared dead and the others fail with an error instead of hanging.
  """
  if mode not in ('auto', 'on', 'off'):
    raise ValueError(f"--distributed={mode!r}; expected 'auto', 'on' or 'off'")
  explicit = coordinator_address is not None or num_processes is not None
  if explicit and (coordinator_address is None or num_processes is None or process_id is None):
    raise ValueError(
      '--coordinator_address, --num_processes and --process_id go together; got '
      f'{coordinator_address!r}, {num_processes!r}, {process_id!r}'
    )
  if explicit and num_processes == 1:
    return
  if explicit or mode == 'on' or (mode == 'auto' and _cluster_detected()):
    jax.distributed.initialize(
      coordinator_address,
      num_processes,
      process_id,
      initialization_timeout=initialization_timeout_s,
      heartbeat_timeout_seconds=heartbeat_timeout_s,
    )


def print0(*args) -> None:
  """print on process 0 only."""
  if jax.process_index() == 0:
    print(*args, flush=True)


def data_mesh(devices: list | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else devices
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), (AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def abstract(tree, sharding: NamedSharding):
  """The shapes and dtypes of `tree`'s leaves as jax.ShapeDtypeStruct placed with
  `sharding`: a target to compile for or restore into, with nothing allocated."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def fit_batch(requested: int, mesh: Mesh, key: str = 'config.eval.batch_size') -> int:
  """The smallest batch >= `requested` that splits evenly over the mesh's devices and over
  the processes: every batch the program forms (training, validation, inference, bench),
  so that any device count works. Rows past the data are padding: the caller fills them,
  marks them, and never counts them in a loss, a statistic or a score. `key` names the
  setting in the error for `requested` < 1."""
  if requested < 1:
    raise ConfigError(f'{key}={requested}; expected a batch size >= 1')
  multiple = math.lcm(mesh.devices.size, jax.process_count())
  return -(-requested // multiple) * multiple


def batch_spec(mesh: Mesh, rows: int, fields: dict[str, tuple[tuple[int, ...], Any]]) -> dict:
  """The abstract global batch {name: [rows, *shape] of dtype}, sharded over AXIS: what a
  step is compiled for ahead of its first call."""
  sharding = batch_sharded(mesh)
  return {
    name: jax.ShapeDtypeStruct((rows, *shape), dtype, sharding=sharding)
    for name, (shape, dtype) in fields.items()
  }


def global_batch(mesh: Mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """This process's rows of the batch -> global arrays sharded over AXIS."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def local_rows(x: jax.Array) -> np.ndarray:
  """The rows of a batch-sharded global array that live on this process, in order."""
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, rows = set(), []
  for shard in shards:
    start = shard.index[0].start or 0
    if start not in seen:  # replicated shards appear once per device
      seen.add(start)
      rows.append(np.asarray(shard.data))
  return np.concatenate(rows, axis=0)


def global_batch_from_full(mesh: Mesh, full: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """A batch every process holds whole -> global arrays (each process gives its rows)."""
  p, n = jax.process_index(), jax.process_count()
  local = {}
  for key, value in full.items():
    rows = value.shape[0] // n
    local[key] = value[p * rows : (p + 1) * rows]
  return global_batch(mesh, local)


def to_host(x: jax.Array) -> np.ndarray:
  """A global array, whole, on every process."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_rows(local: np.ndarray) -> np.ndarray:
  """Every process's equally-shaped rows, concatenated in process order, on every process."""
  if jax.process_count() == 1:
    return local
  return np.asarray(multihost_utils.process_allgather(local, tiled=True))


def pad_rows(x: np.ndarray, multiple: int) -> np.ndarray:
  """Zero rows appended so that the first axis is a multiple of `multiple`."""
  extra = -x.shape[0] % multiple
  return np.concatenate([x, np.zeros((extra, *x.shape[1:]), x.dtype)]) if extra else x


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any (a host-level all-reduce)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))


# How long a barrier waits for the slowest process: process 0 may build a large dataset's
# cache while the others wait. A process that dies is noticed sooner, by the heartbeat.
BARRIER_TIMEOUT_S = 24 * 3600
_barriers: dict[str, int] = {}


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
  """Waits until every process gets here, through the coordination service (no device
  collective: on CPU, gloo gives a collective's first exchange only 30 s, and processes
  may arrive minutes apart, e.g. while process 0 builds the cache or a slower host
  compiles)."""
  if jax.process_count() == 1:
    return
  count = _barriers[name] = _barriers.get(name, 0) + 1  # each use of a name is its own
  sync = ocp_multihost.get_barrier_sync_fn()
  sync(key=f'ecam_jax:{name}:{count}', timeout_ms=int(timeout_s * 1000))
