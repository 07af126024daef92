"""The grain input pipeline: slices from a SliceCache to per-process batches.

Training draws an endless stream of slices, epoch after epoch. Epoch e is a permutation of
the training slices (or only those with foreground, with data.foreground_only) seeded by
(seed, e); with data.foreground_oversample = f, round(f * n) of the epoch's n draws are
forced to come from slices with foreground (cycled through in a random order) and the
rest from the permutation, all shuffled together. The last incomplete global batch of an
epoch is dropped. Global batch k is draws [k * B, (k + 1) * B) of that stream, whatever the
number of processes; process p reads only rows [p * b, (p + 1) * b) of it, b = B / P. So the
same seed gives the same global batches on 1 host or 64, and the position in the stream
is one number, the global batch index: a resumed run starts a new iterator there, whatever
its process count or reader workers (elastic resume). Augmentation is not done here: it runs
on the accelerator inside the train step (augment.py).
"""

import sys
import time
from collections.abc import Iterator

import grain
import ml_collections
import numpy as np
from absl import flags

from ecam_jax.data.cache import SliceCache
from ecam_jax.errors import ConfigError, DataError


class SliceSource:
  """A grain random-access source of every slice in a cache: {'image' [S, S, C], 'label'
  [S, S, 1]}.

  Memory maps are opened lazily in each process that reads (grain workers get a pickled
  copy holding only the folder), and the repr names the cache's content for grain's
  checkpoint checks.
  """

  def __init__(self, cache: SliceCache):
    self._path = str(cache.path)
    self._fingerprint = cache.fingerprint
    self._size = len(cache.index.case)
    self._cache: SliceCache | None = cache

  def __getstate__(self):
    return {**self.__dict__, '_cache': None}

  def __len__(self) -> int:
    return self._size

  def __getitem__(self, position: int) -> dict[str, np.ndarray]:
    if self._cache is None:
      self._cache = SliceCache(self._path)
    cache = self._cache
    case_id = cache.case_ids[cache.index.case[position]]
    z = cache.index.z[position]
    return {
      'image': np.asarray(cache.image(case_id)[z]),  # [S, S, C] float32
      'label': np.asarray(cache.label(case_id)[z])[..., None],  # [S, S, 1] uint8
    }

  def __repr__(self) -> str:
    return f'SliceSource(path={self._path!r}, fingerprint={self._fingerprint!r})'


def epoch_order(
  pool: np.ndarray,
  foreground_pool: np.ndarray,
  oversample: float,
  seed: int,
  epoch: int,
  length: int,
) -> np.ndarray:
  """[length] slice positions drawn in epoch `epoch` (see the module docstring)."""
  rng = np.random.default_rng((seed, epoch))
  forced = int(round(oversample * length))
  order = pool[rng.permutation(len(pool))[: length - forced]]
  if forced:
    order = np.concatenate([order, np.resize(rng.permutation(foreground_pool), forced)])
    rng.shuffle(order)
  return order


class DrawSource:
  """The endless stream of this process's training rows, as a grain random-access source:
  element i is row i % b of the process's share of global batch i // b (b = P' / P).

  The stream depends only on the seed, the global batch B and the pool, never on the number
  of processes or reader workers: global batch k is the same slices on 1 host or 64. A
  global batch may be padded to P' >= B rows (so that it splits over the devices): rows
  B .. P' - 1 are zeros with 'valid' False, and the train step counts them nowhere.
  """

  def __init__(
    self,
    cache,
    *,
    pool,
    foreground_pool,
    oversample,
    seed,
    batch,
    padded_batch,
    process_index,
    process_count,
  ):
    self._slices = SliceSource(cache)
    self._args = (pool, foreground_pool, oversample, seed)
    self._global = batch
    self._local = padded_batch // process_count
    self._offset = process_index * self._local
    self._epoch_length = len(pool) // batch * batch
    self._size = cache.image_size
    self._channels = cache.channels
    self._cached: tuple[int, np.ndarray] = (-1, np.zeros(0, np.int64))

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    step, row = divmod(index, self._local)
    slot = self._offset + row  # the row of the (padded) global batch
    if slot >= self._global:
      return {
        'image': np.zeros((self._size, self._size, self._channels), np.float32),
        'label': np.zeros((self._size, self._size, 1), np.uint8),
        'valid': np.False_,
      }
    epoch, draw = divmod(step * self._global + slot, self._epoch_length)
    cached_epoch, order = self._cached
    if cached_epoch != epoch:
      order = epoch_order(*self._args, epoch, self._epoch_length)
      self._cached = (epoch, order)
    return {**self._slices[int(order[draw])], 'valid': np.True_}

  def __repr__(self) -> str:
    return (
      f'DrawSource({self._slices!r}, global_batch={self._global}, '
      f'local_batch={self._local}, offset={self._offset})'
    )


def _local_batch(
  config: ml_collections.ConfigDict, process_count: int, padded_batch: int | None
) -> int:
  """Rows of each global batch this process reads: the global batch, padded to
  `padded_batch` when given, split evenly over the processes."""
  batch = int(config.train.batch_size)
  padded = batch if padded_batch is None else int(padded_batch)
  if batch < 1 or padded < batch or padded % process_count:
    raise ConfigError(
      f'config.train.batch_size={batch} (global; padded to {padded}) must be positive and '
      f'split evenly over the {process_count} processes once padded'
    )
  return padded // process_count


def _pools(
  cache: SliceCache, case_ids: list[str], config: ml_collections.ConfigDict
) -> tuple[np.ndarray, np.ndarray]:
  """(pool, foreground pool): positions in cache.index that training draws from; checked."""
  data = config.data
  if not case_ids:
    raise DataError('the training split is empty; check the splits (WORKDIR/splits.json)')
  if not 0 <= data.foreground_oversample < 1:
    raise ConfigError(
      f'config.data.foreground_oversample={data.foreground_oversample}; '
      'expected a fraction in [0, 1)'
    )
  positions = cache.slices_of(case_ids)
  foreground = positions[cache.index.foreground[positions]]
  if (data.foreground_only or data.foreground_oversample > 0) and not len(foreground):
    raise DataError(
      f'no slice of the {len(case_ids)} training cases has foreground, but '
      'config.data.foreground_only or foreground_oversample asks for it'
    )
  pool = foreground if data.foreground_only else positions
  if len(pool) < int(config.train.batch_size):
    raise ConfigError(
      f'config.train.batch_size={config.train.batch_size} is larger than the {len(pool)} '
      'training slices: an epoch would have no batch'
    )
  return pool, foreground


def steps_per_epoch(
  cache: SliceCache, case_ids: list[str], config: ml_collections.ConfigDict
) -> int:
  """Global batches per epoch (the last incomplete one is dropped)."""
  pool, _ = _pools(cache, case_ids, config)
  return len(pool) // int(config.train.batch_size)


def train_dataset(
  cache: SliceCache,
  case_ids: list[str],
  config: ml_collections.ConfigDict,
  *,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
  start_batch: int = 0,
  padded_batch: int | None = None,
) -> grain.MapDataset:
  """This process's endless training batches 'image' [b, S, S, C], 'label' [b, S, S, 1] and
  'valid' [b] from global batch `start_batch` on, as a MapDataset; global batches are padded to
  `padded_batch` rows when given (DrawSource)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, {process_count})')
  if start_batch < 0:
    raise ValueError(f'start_batch={start_batch}; expected >= 0')
  local = _local_batch(config, process_count, padded_batch)
  pool, foreground = _pools(cache, case_ids, config)
  draws = DrawSource(
    cache,
    pool=pool,
    foreground_pool=foreground,
    oversample=0.0 if config.data.foreground_only else float(config.data.foreground_oversample),
    seed=seed,
    batch=int(config.train.batch_size),
    padded_batch=local * process_count,
    process_index=process_index,
    process_count=process_count,
  )
  return grain.MapDataset.source(draws)[start_batch * local :].batch(local, drop_remainder=True)


def train_iterator(
  cache: SliceCache,
  case_ids: list[str],
  config: ml_collections.ConfigDict,
  *,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
  start_batch: int = 0,
  padded_batch: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """An iterator over train_dataset from global batch `start_batch` (padded to
  `padded_batch` rows when given).

  The position in the stream is the only state: a resumed run (on any number of processes,
  with any data.num_workers) builds a new iterator at the global batch it had reached.
  data.num_workers > 0 reads in that many worker processes (the same batches as with 0);
  data.prefetch_batches batches are read ahead. Close it (`close_iterator`) when done.
  """
  data = config.data
  ds = train_dataset(
    cache,
    case_ids,
    config,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
    start_batch=start_batch,
    padded_batch=padded_batch,
  )
  # One reader thread fills the buffer of data.prefetch_batches while the step runs (0: read
  # when asked). On 2 cores more threads were slower: a slice is a memory copy.
  threads = 1 if data.prefetch_batches > 0 else 0
  ds = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=threads, prefetch_buffer_size=data.prefetch_batches)
  )
  if data.num_workers > 0:
    if not flags.FLAGS.is_parsed():
      raise ConfigError(
        f'config.data.num_workers={data.num_workers} starts grain worker processes, which read '
        'absl flags, but nothing parsed them: run through `python -m ecam_jax.main`, call '
        '`absl.flags.FLAGS.mark_as_parsed()` first (notebooks, scripts), or set '
        'config.data.num_workers=0'
      )
    options = grain.MultiprocessingOptions(
      num_workers=data.num_workers, per_worker_buffer_size=max(1, data.prefetch_batches)
    )
    ds = ds.mp_prefetch(options)
  return iter(ds)


def close_iterator(iterator: Iterator) -> None:
  """Stops an iterator's reader workers, if it has any (grain's multiprocessing iterators
  print a traceback at exit when left open)."""
  close = getattr(iterator, 'close', None)
  if close is not None:
    close()


def eval_batches(
  cache: SliceCache,
  case_ids: list[str],
  batch_size: int,
  *,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Every slice of these cases once, in order: case by case, z ascending.

  Yields this process's rows of each global batch of `batch_size`: 'image' float32
  [b, S, S, C] and 'label' uint8 [b, S, S, 1], 'case' (int32 position in case_ids), 'z' (int32) and
  'valid' (bool; the padding rows that fill the last batch are False and hold zeros).
  """
  if batch_size < 1 or batch_size % process_count:
    raise ConfigError(
      f'eval batch_size={batch_size} (global) must be a positive multiple of the '
      f'{process_count} processes'
    )
  local = batch_size // process_count
  positions = cache.slices_of(case_ids)
  case_of = {cache.case_ids.index(c): k for k, c in enumerate(case_ids)}
  size = cache.image_size
  for start in range(0, len(positions), batch_size):
    rows = positions[start + process_index * local : start + (process_index + 1) * local]
    out = {
      'image': np.zeros((local, size, size, cache.channels), np.float32),
      'label': np.zeros((local, size, size, 1), np.uint8),
      'case': np.zeros(local, np.int32),
      'z': np.zeros(local, np.int32),
      'valid': np.zeros(local, bool),
    }
    for i, position in enumerate(rows):
      case_id = cache.case_ids[cache.index.case[position]]
      z = cache.index.z[position]
      out['image'][i] = cache.image(case_id)[z]
      out['label'][i, ..., 0] = cache.label(case_id)[z]
      out['case'][i] = case_of[cache.index.case[position]]
      out['z'][i] = z
      out['valid'][i] = True
    yield out


def measure_slices_per_second(iterator: Iterator[dict[str, np.ndarray]], num_batches: int) -> float:
  """Slices per second that `iterator` delivers over num_batches (after one warm-up batch)."""
  next(iterator)  # starts workers and fills buffers
  slices = 0
  start = time.perf_counter()
  for _ in range(num_batches):
    slices += len(next(iterator)['image'])
  return slices / (time.perf_counter() - start)
