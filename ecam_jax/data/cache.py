"""The preprocessing cache: every case once through volumes.py, then slices by memory map.

Reading one slice of a `.nii.gz` decompresses everything before it; training reads slices
in random order, so each case is preprocessed once into `.npy` arrays (float32 image
`[Z, S, S, C]` of C channels and uint8 label `[Z, S, S]`) that a memory map reads a slice of
in well under a millisecond. The folder:

    cache/manifest.json          written last: the cache is complete iff it exists
    cache/index.npz              per slice: case position, z, foreground flag and pixels
    cache/cases/<id>/image.npy   float32 [Z, S, S, C]
    cache/cases/<id>/label.npy   uint8 [Z, S, S]: 1 where foreground (or the class index)
    cache/cases/<id>/meta.json   sources, settings, the undo record, foreground slices
                                 and their foreground pixels

A case is reused when its source files (path, size, mtime) and the preprocessing settings
are unchanged, and rebuilt otherwise; a changed setting rebuilds all. Inputs are checked
(files, headers) before anything is written, and data errors found while building stop
the build before the manifest is written, so an interrupted or failed prepare never
leaves a cache that looks complete. Runners that share a cache folder take turns: each
holds a lock file beside it (`.cache.prepare.lock` for `cache/`) while it builds or checks
it, so the folds of a cross-validation may start together on one cache.
"""

import hashlib
import json
import multiprocessing
import os
import pathlib
from concurrent import futures
from typing import Any, NamedTuple

import ml_collections
import numpy as np
import tqdm

from ecam_jax import folder_lock
from ecam_jax.atomic import TEMP_PREFIXES, atomic_path, remove, write_json_atomic
from ecam_jax.data import case_files, fingerprint, layouts, normalization, volumes
from ecam_jax.errors import DataError

PREPARE_LOCK = '.prepare.lock'  # beside the cache folder (.cache.prepare.lock), held while building
CACHE_VERSION = 2  # 2: images [Z, S, S, C] (1: [Z, S, S], one channel)
IMAGE_DTYPE = np.float32


class Amount(NamedTuple):
  """How much foreground a case holds (after resizing)."""

  voxels: int
  slices: int


class SliceIndex(NamedTuple):
  """Every slice of the cache, ordered by case then z: three [N] arrays."""

  case: np.ndarray  # [N] int32: position in SliceCache.case_ids
  z: np.ndarray  # [N] int32: slice index in the canonical volume
  foreground: np.ndarray  # [N] bool: the slice has at least one foreground pixel


class SliceCache:
  """A complete cache folder: memory-mapped arrays per case and the slice index.

  Attributes: path, case_ids (sorted; `index.case` points into it), held_out (the ones a
  dataset holds out for testing), index (SliceIndex), image_size (S), fingerprint (changes
  whenever the cache's content does).
  """

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    manifest = self.path / 'manifest.json'
    if not manifest.is_file():
      raise DataError(f'{self.path} is not a complete cache (no manifest.json); run --mode=prepare')
    text = manifest.read_text()
    meta = json.loads(text)
    self.fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
    self.case_ids: list[str] = [c['case_id'] for c in meta['cases']]
    # the dataset's labelled test cases (nnU-Net's labelsTs): the test split
    self.held_out: list[str] = [c['case_id'] for c in meta['cases'] if c.get('held_out')]
    self.image_size: int = meta['settings']['image_size']
    self.channels: int = len(meta['settings']['channels'])
    self._position = {case_id: k for k, case_id in enumerate(self.case_ids)}
    with np.load(self.path / 'index.npz') as f:
      self.index = SliceIndex(f['case'], f['z'], f['foreground'])
      # [N] foreground pixels per slice; None in a cache built before they were kept
      self._pixels = f.get('pixels')
    self._arrays: dict[tuple[str, str], np.memmap] = {}

  def _check_known(self, case_id: str) -> None:
    if case_id not in self._position:
      raise DataError(f'case {case_id!r} is not in the cache {self.path}')

  def _case_dir(self, case_id: str) -> pathlib.Path:
    self._check_known(case_id)
    return self.path / 'cases' / case_id

  def _array(self, case_id: str, name: str) -> np.memmap:
    key = (case_id, name)
    if key not in self._arrays:
      self._arrays[key] = np.load(self._case_dir(case_id) / f'{name}.npy', mmap_mode='r')
    return self._arrays[key]

  def image(self, case_id: str) -> np.memmap:
    """float32 [Z, S, S, C], each channel normalized (see normalization.normalize)."""
    return self._array(case_id, 'image')

  def label(self, case_id: str) -> np.memmap:
    """uint8 [Z, S, S] targets: 1 where the raw label is in data.foreground_labels, or each
    class's output index (`classes.index_lookup`)."""
    return self._array(case_id, 'label')

  def record(self, case_id: str) -> volumes.VolumeRecord:
    """What `volumes.restore` needs to put a prediction of this case into its file's grid."""
    meta = json.loads((self._case_dir(case_id) / 'meta.json').read_text())
    return volumes.VolumeRecord.from_dict(meta['record'])

  def _count_pixels(self) -> np.ndarray:
    """[N] foreground pixels per slice, counted in the labels (caches without them)."""
    counts = [foreground_pixels(self.label(c)) for c in self.case_ids]
    return np.concatenate(counts) if counts else np.zeros(0, np.int64)

  def foreground_cases(self) -> set[str]:
    """The ids of the cases with at least one foreground pixel (after resizing)."""
    return {self.case_ids[k] for k in np.unique(self.index.case[self.index.foreground])}

  def foreground_amounts(self) -> dict[str, Amount]:
    """Every case's foreground voxels and slices (after resizing), cases without any too."""
    if self._pixels is None:
      self._pixels = self._count_pixels()
    n = len(self.case_ids)
    voxels = np.bincount(self.index.case, weights=self._pixels, minlength=n)
    slices = np.bincount(self.index.case, weights=self.index.foreground, minlength=n)
    return {c: Amount(int(voxels[k]), int(slices[k])) for k, c in enumerate(self.case_ids)}

  def slices_of(self, case_ids: list[str]) -> np.ndarray:
    """[M] positions in `index` of every slice of these cases: case by case, z ascending."""
    for case_id in case_ids:
      self._check_known(case_id)
    parts = [np.flatnonzero(self.index.case == self._position[c]) for c in case_ids]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def foreground_pixels(label: np.ndarray) -> np.ndarray:
  """[Z] int64: the foreground (non-zero) pixels of each slice of a [Z, S, S] label."""
  return np.count_nonzero(np.reshape(label, (len(label), -1)), axis=1).astype(np.int64)


def cache_path(data: ml_collections.ConfigDict, workdir: str | os.PathLike) -> pathlib.Path:
  """config.data.cache_dir, or WORKDIR/cache when it is empty (`data`: config.data)."""
  return pathlib.Path(data.cache_dir or pathlib.Path(workdir) / 'cache')


def _settings(data: ml_collections.ConfigDict, declared: tuple[int, ...]) -> dict[str, Any]:
  """Everything that changes the cached arrays: a change rebuilds every case."""
  schemes = [normalization.normalization_of(c) for c in data.channels]
  settings = {
    'version': CACHE_VERSION,
    'dtype': np.dtype(IMAGE_DTYPE).name,
    'channels': list(data.channels),
    'image_size': int(data.image_size),
    'foreground_labels': sorted(int(v) for v in data.foreground_labels),
    'declared_labels': list(declared),
  }
  if not data.merge_foreground:  # a binary cache keeps its key (and its files) as before
    settings['classes'] = data.classes
  if 'CT' in schemes and data.ct_normalization == 'nnunet':
    settings['ct_statistics'] = [[float(v) for v in s] for s in data.ct_statistics]
  elif 'CT' in schemes:
    settings['hu_window'] = [float(v) for v in data.hu_window]
  if 'zscore' in schemes:
    settings['mr_percentiles'] = [float(v) for v in data.mr_percentiles]
  return settings


def _sources(case: case_files.Case) -> dict[str, list]:
  """What identifies a case's files: resolved path, size and modification time."""
  out = {}
  for key, path in (*((f'image{c}', p) for c, p in enumerate(case.images)), ('label', case.label)):
    stat = path.stat()
    out[key] = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
  return out


def _read_json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError):
    return None


def _is_built(case_dir: pathlib.Path, sources: dict[str, list], settings: dict[str, Any]) -> bool:
  """Whether case_dir holds this case built from these files with these settings."""
  meta = _read_json(case_dir / 'meta.json') or {}
  return meta.get('sources') == sources and meta.get('settings') == settings


def _build_case(
  case: case_files.Case,
  data: dict[str, Any],
  declared: tuple[int, ...],
  settings: dict[str, Any],
  sources: dict[str, list],
  cases_dir: pathlib.Path,
) -> None:
  """Reads, checks and preprocesses one case into cases_dir/<id> (all of it or nothing)."""
  data_config = ml_collections.ConfigDict(data)
  channels = volumes.load_channels(case.images, len(data_config.channels))
  label = volumes.load_nifti(case.label)
  volumes.check_label_values(label, declared, case.label)
  x, record = volumes.preprocess_image(channels, data_config)  # [Z, S, S, C]
  y = volumes.preprocess_label(label, data_config)  # [Z, S, S]
  meta = {
    'sources': sources,
    'settings': settings,
    'record': record.to_dict(),
    'num_slices': int(len(y)),
  }
  pixels = foreground_pixels(y)
  meta['foreground_slices'] = np.flatnonzero(pixels).tolist()
  meta['foreground_pixels'] = pixels[pixels > 0].tolist()
  with atomic_path(cases_dir / case.case_id, directory=True) as tmp:
    np.save(tmp / 'image.npy', x.astype(IMAGE_DTYPE))
    np.save(tmp / 'label.npy', y.astype(np.uint8))
    (tmp / 'meta.json').write_text(json.dumps(meta))


def _build_all(jobs: list[tuple], workers: int, progress: bool) -> None:
  """Runs _build_case over jobs, in `workers` spawned processes when there is more than one."""
  bar = tqdm.tqdm(total=len(jobs), desc='prepare cache', unit='case', disable=not progress)
  with bar:
    if workers <= 1 or len(jobs) <= 1:
      for job in jobs:
        _build_case(*job)
        bar.update()
      return
    # spawn, not fork: the parent may already run JAX threads.
    context = multiprocessing.get_context('spawn')
    pool = futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context)
    try:
      for done in futures.as_completed([pool.submit(_build_case, *job) for job in jobs]):
        done.result()
        bar.update()
    finally:
      pool.shutdown(wait=True, cancel_futures=True)


def _resolve_ct_statistics(data, cases: list[case_files.Case], path: pathlib.Path) -> None:
  """Fills data.ct_statistics (ct_normalization 'nnunet', when unset) from the cases'
  intensities: computed once and kept in the cache folder, keyed by the cases' files. As
  nnU-Net, from the training cases (imagesTr) only: a held-out test set is not looked at."""
  if data.ct_normalization != 'nnunet' or data.ct_statistics or not normalization.ct_channels(data):
    return
  cases = [c for c in cases if not c.held_out]
  record = path / 'ct_statistics.json'
  key = {'sources': [_sources(c) for c in cases], 'channels': list(data.channels)}
  stored = _read_json(record)
  if not (isinstance(stored, dict) and stored.get('key') == key):
    stored = {'key': key, 'statistics': fingerprint.ct_statistics(cases, data)}
    path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, stored)
  data.ct_statistics = tuple(tuple(float(v) for v in s) for s in stored['statistics'])


def _entry(case: case_files.Case, sources: dict[str, list]) -> dict[str, Any]:
  """A case in manifest.json; a held-out one says so (caches of data without any keep
  their manifest, and so stay valid)."""
  entry = {'case_id': case.case_id, 'sources': sources}
  return {**entry, 'held_out': True} if case.held_out else entry


def prepare_cache(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, progress: bool = True
) -> SliceCache:
  """Builds, completes or reuses the cache of config.data in cache_path(config.data, workdir).

  Runners that share the cache folder (the folds of a cross-validation started together)
  take turns: one builds while the others wait for its lock, then find the cache built.
  With data.prepare_workers > 1 cases are built in spawned processes: a script that calls
  this needs the `if __name__ == '__main__':` guard (absl.app.run entry points have it).
  """
  path = cache_path(config.data, workdir)

  def say(holder: dict) -> None:
    if progress:
      who = f'{holder.get("host", "?")} pid {holder.get("pid", "?")}'
      print(f'waiting for {who}, which prepares {path}', flush=True)

  with folder_lock.folder_lock(path.parent, f'.{path.name}{PREPARE_LOCK}', wait=say):
    return _prepare(config, path, progress)


def _prepare(config: ml_collections.ConfigDict, path: pathlib.Path, progress: bool) -> SliceCache:
  data = config.data
  cases = layouts.discover_cases(data)
  layouts.resolve_settings(data)  # a no-op after source.resolve_data, which training runs first
  _resolve_ct_statistics(data, cases, path)
  declared = tuple(data.label_values)
  settings = _settings(data, declared)
  sources = {c.case_id: _sources(c) for c in cases}
  manifest = {
    'settings': settings,
    'cases': [_entry(c, sources[c.case_id]) for c in cases],
  }
  if _read_json(path / 'manifest.json') == manifest and (path / 'index.npz').is_file():
    return SliceCache(path)

  cases_dir = path / 'cases'
  stale = [c for c in cases if not _is_built(cases_dir / c.case_id, sources[c.case_id], settings)]
  for case in stale:  # cheap header checks of every case before any is built
    volumes.check_pair(case.images, case.label, len(data.channels))
  remove(path / 'manifest.json')  # from here until the end, the cache is incomplete
  cases_dir.mkdir(parents=True, exist_ok=True)
  keep = {c.case_id for c in cases}
  for entry in cases_dir.iterdir():  # leftovers of killed runs; cases no longer in the data
    if entry.name.startswith(TEMP_PREFIXES) or entry.name not in keep:
      remove(entry)
  plain = data.to_dict()
  jobs = [(c, plain, declared, settings, sources[c.case_id], cases_dir) for c in stale]
  _build_all(jobs, int(data.prepare_workers), progress)

  counts, pixels = [], []
  for case in cases:
    meta = json.loads((cases_dir / case.case_id / 'meta.json').read_text())
    per_slice = np.zeros(meta['num_slices'], np.int64)
    if 'foreground_pixels' in meta:
      per_slice[meta['foreground_slices']] = meta['foreground_pixels']
    else:  # a case built before the pixels were kept
      label = np.load(cases_dir / case.case_id / 'label.npy', mmap_mode='r')
      per_slice[:] = foreground_pixels(label)
    counts.append(meta['num_slices'])
    pixels.append(per_slice)
  with atomic_path(path / 'index.npz') as tmp, open(tmp, 'wb') as f:
    np.savez(
      f,
      case=np.repeat(np.arange(len(cases), dtype=np.int32), counts),
      z=np.concatenate([np.arange(n, dtype=np.int32) for n in counts]),
      foreground=np.concatenate(pixels) > 0,
      pixels=np.concatenate(pixels),
    )
  write_json_atomic(path / 'manifest.json', manifest)
  return SliceCache(path)
