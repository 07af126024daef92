"""Segmenting volumes with a trained model (prediction only; scoring is evaluate.py's).

A case (one NIfTI file, one file per channel as nnU-Net names them, or one 4-D file of
several channels) goes: -> canonical axial slices and each channel's normalization numbers
(data/volumes.py, data/normalization.py) -> batches of raw slices to the device, spread
over this process's devices, where they are normalized and resized, go through the model
(EC folded into single convs; optional flip TTA, averaging probabilities; an ensemble's
members averaged) and come out resized back (linearly) and thresholded at
config.eval.threshold, or, with several classes, as the most probable class
(volume_steps.py) -> the file's orientation -> optionally only the largest 3-D connected
components of each class (config.eval.keep_components, or what the cross-validation of an
ensemble of folds chose: postprocess.py) -> a NIfTI label map with the dataset's label
values (`classes.output_label_values`; 1 for a binary run's foreground), the input's exact
shape and affine, written atomically, never over an input (label_maps.py). The host
prepares the next batch while the device runs the last, reads the next case and writes the
last mask while the device runs this one.
"""

import functools
import os
import pathlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures

import jax
import ml_collections
import nibabel as nib
import numpy as np
import tqdm
from jax.sharding import Mesh

from ecam_jax import (
  checkpoint,
  classes,
  configuration,
  parallel,
  postprocess,
  steps,
  volume_steps,
)
from ecam_jax.data import case_files, normalization, volumes
from ecam_jax.data import source as data_source
from ecam_jax.data.case_files import NIFTI_SUFFIXES
from ecam_jax.errors import DataError
from ecam_jax.label_maps import finish_labels, write_mask
from ecam_jax.models.build import abstract_variables, build_model, has_ec_blocks
from ecam_jax.models.layers import fold_ec
from ecam_jax.stage_times import StageTimes


class Predictor:
  """A trained model, or an ensemble of several, ready to segment volumes on this
  process's devices.

  workdir: a run's folder, or several (an ensemble, e.g. the folds of a cross-validation:
  each restores its checkpoint `which`, and their probabilities are averaged, after each
  one's flip TTA when on). fold: EC branches folded into single 3x3 convs (same outputs,
  faster). variables: use these (one variable dict, or a list for an ensemble) instead of
  restoring. mesh: the devices to spread each batch over (default: all of this process's;
  any count works). Flip TTA and the threshold are config.eval's; the kept components are
  config.eval.keep_components, or when that is None and the members are the folds of a
  WORKDIR whose --mode=crossval chose them, that choice (`postprocessing` names its file).
  `meta` is the checkpoint's metadata, or {'ensemble': [each member's]}.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike | Sequence[str | os.PathLike] | None,
    which: str = 'best',
    *,
    fold: bool = True,
    variables: dict | Sequence[dict] | None = None,
    mesh: Mesh | None = None,
  ):
    configuration.check(config)  # config.eval.threshold and keep_components among the rest
    self.config = config
    self.label_values = np.asarray(classes.output_label_values(config))
    self.mesh = parallel.data_mesh(jax.local_devices()) if mesh is None else mesh
    model = build_model(config.model)
    size = config.data.image_size
    replicated = parallel.replicated(self.mesh)
    if variables is None:
      workdirs = [workdir] if isinstance(workdir, (str, os.PathLike)) else list(workdir)
      target = parallel.abstract(abstract_variables(model, size), replicated)
      restored = [checkpoint.restore_variables(w, which, target) for w in workdirs]
      members = [v for v, _ in restored]
      metas = [{'workdir': str(w), **m} for w, (_, m) in zip(workdirs, restored, strict=True)]
      self.meta = restored[0][1] if len(restored) == 1 else {'ensemble': metas}
    else:
      members = [variables] if isinstance(variables, Mapping) else list(variables)
      members = [jax.device_put(v, replicated) for v in members]
      self.meta = {}
    self.folded = bool(fold and has_ec_blocks(config.model))
    if self.folded:
      folding = jax.jit(lambda v: fold_ec(v, config.model.bn_epsilon))
      members = [folding(v) for v in members]
      model = build_model(config.model, folded=True)
    self.members = members
    self.times = StageTimes()  # where segment_file's time went, summed over its volumes
    self._replicated, self._sharded = replicated, parallel.batch_sharded(self.mesh)
    self._step = steps.make_predict_step(model, self.mesh, config.eval.tta_flip)
    self._prepare = volume_steps.make_prepare(self.mesh, size)
    self._finish = volume_steps.make_finish(self.mesh)
    keep, merged, self.postprocessing = config.eval.keep_components, 0, None
    if keep is None and variables is None and len(members) > 1:
      chosen, self.postprocessing = postprocess.decided(workdirs)
      if chosen is not None:
        keep, merged = chosen['keep_components'], chosen['keep_foreground_component']
    k = len(self.label_values) - 1
    self.decision = ml_collections.ConfigDict(
      {
        'threshold': config.eval.threshold,
        'keep_components': postprocess.per_class(keep, k),
        'keep_foreground_component': merged,
      }
    )

  def probabilities(self, slices: np.ndarray, progress: bool = False) -> np.ndarray:
    """float32 [Z, S, S, C] preprocessed slices ([Z, S, S] for one channel) -> foreground
    probabilities [Z, S, S] (one logit) or each class's [Z, S, S, K + 1] (softmax); an
    ensemble's members averaged on the device (`_batches`)."""
    slices = slices[..., None] if slices.ndim == 3 else slices
    out = self._batches(len(slices), lambda a, b: slices[a:b], self._mean_probability, progress)
    if not out:
      k = self.config.model.num_classes
      return np.zeros((*slices.shape[:3], *((k,) if k > 1 else ())), np.float32)
    return np.concatenate(out)

  def segment_image(
    self, image: nib.Nifti1Image | Sequence[nib.Nifti1Image], progress: bool = False
  ) -> np.ndarray:
    """A NIfTI image (or one per channel, on one grid) -> its label map in the image's own
    voxel grid (channel 0's shape): 1 where foreground (binary), else each class's label
    value; 0 background."""
    images = [image] if isinstance(image, nib.Nifti1Image) else list(image)
    with self.times('read'):  # a file's image decompresses here
      arrays = [np.asanyarray(img.dataobj) for img in images]
    where = images[0].get_filename() or 'the image'
    return self.segment_arrays(arrays, images[0].affine, progress, where)

  def segment_arrays(
    self,
    arrays: Sequence[np.ndarray],
    affine: np.ndarray,
    progress: bool = False,
    where: str = 'the image',
  ) -> np.ndarray:
    """`segment_image` of channels already read (one array per channel, on one grid)."""
    with self.times('preprocess'):
      case = volumes.canonical_case(arrays, affine, self.config.data, where)
    return self.segment_case(case, progress)

  def segment_case(self, case: volumes.CanonicalCase, progress: bool = False) -> np.ndarray:
    """`segment_image` of a case read and oriented.

    Batches of its raw slices go to the device, which normalizes and resizes them, runs the
    model and resizes and decides its probabilities (volume_steps.py); only uint8 indices
    come back. The host's work per batch (slicing, the transfer) overlaps the device's
    (`_batches`); the 3-D components and the label values follow on the host."""
    numbers = jax.device_put(np.asarray(case.numbers, np.float32), self._replicated)
    shape = tuple(case.record.canonical_shape[1:])

    def run(raw: jax.Array) -> jax.Array:
      prob = self._mean_probability(self._prepare(raw, numbers))
      return self._finish(prob, self.decision.threshold, shape)

    load = functools.partial(raw_rows, case)
    index = np.concatenate(self._batches(len(case.channels[0]), load, run, progress))
    with self.times('restore'):
      index = volumes.from_canonical(index, case.record)
    return finish_labels(index, self.decision, self.label_values, self.times)

  def device_seconds(self, case: volumes.CanonicalCase) -> dict[str, float]:
    """Where the device's time on a case goes: its batches through each device step
    alone, each step waited for (so the sum exceeds the overlapped pipeline's): the
    transfer of raw slices, normalizing and resizing, the model, and resizing back with
    the decision. Call it after a first `segment_case` of the same in-plane size, so that
    nothing compiles here."""
    batch = parallel.fit_batch(self.config.eval.batch_size, self.mesh, 'config.eval.batch_size')
    numbers = jax.device_put(np.asarray(case.numbers, np.float32), self._replicated)
    shape = tuple(case.record.canonical_shape[1:])
    seconds = dict.fromkeys(('transfer', 'normalize_resize', 'model', 'resize_back_decide'), 0.0)
    for start in range(0, len(case.channels[0]), batch):
      x = parallel.pad_rows(raw_rows(case, start, start + batch), batch)
      for stage, step in (
        ('transfer', lambda a: jax.device_put(a, self._sharded)),
        ('normalize_resize', lambda a: self._prepare(a, numbers)),
        ('model', self._mean_probability),
        ('resize_back_decide', lambda a: self._finish(a, self.decision.threshold, shape)),
      ):
        begin = time.perf_counter()
        x = jax.block_until_ready(step(x))
        seconds[stage] += time.perf_counter() - begin
    return {stage: round(s, 4) for stage, s in seconds.items()}

  def _mean_probability(self, images: jax.Array) -> jax.Array:
    """The members' mean probabilities of a device batch (dispatched, not waited for)."""
    return sum(self._step(v, images) for v in self.members) / len(self.members)

  def _batches(
    self,
    rows: int,
    load: Callable[[int, int], np.ndarray],
    run: Callable[[jax.Array], jax.Array],
    progress: bool = False,
  ) -> list[np.ndarray]:
    """`run` of each batch of `load(start, stop)` rows, on the host, in order.

    Batches of config.eval.batch_size rows rounded up to a multiple of the device count
    (`parallel.fit_batch`), the last one padded with zero rows to the same size (one
    compiled shape) whose outputs are dropped. Overlapped: a batch is loaded and
    dispatched before the previous one's result is waited for, so the host's work runs
    while the device computes; each result is transferred once. 'preprocess' times the
    loading, 'model' the waiting."""
    batch = parallel.fit_batch(self.config.eval.batch_size, self.mesh, 'config.eval.batch_size')
    out, pending = [], None
    starts = range(0, rows, batch)
    for start in tqdm.tqdm(starts, desc='slices', unit='batch', disable=not progress, leave=False):
      with self.times('preprocess'):
        chunk = load(start, min(start + batch, rows))
        device_batch = jax.device_put(parallel.pad_rows(chunk, batch), self._sharded)
      result = run(device_batch)
      if pending is not None:
        out.append(self._fetch(*pending))
      pending = (result, len(chunk))
    if pending is not None:
      out.append(self._fetch(*pending))
    return out

  def _fetch(self, result: jax.Array, rows: int) -> np.ndarray:
    with self.times('model'):
      return np.asarray(result)[:rows]

  def segment_array(self, volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """From Python: a 3-D array, or [x, y, z, C] with its channels last (in the voxel order
    `affine` describes) -> uint8 mask."""
    volume = np.asarray(volume)
    if volume.ndim not in (3, 4):
      raise ValueError(f'expected a 3-D volume or [x, y, z, C], got shape {volume.shape}')
    affine = np.asarray(affine, np.float64)
    if volume.ndim == 3:
      return self.segment_image(nib.Nifti1Image(volume, affine))
    return self.segment_image(
      [nib.Nifti1Image(volume[..., c], affine) for c in range(volume.shape[-1])]
    )

  def segment_file(
    self,
    source: str | os.PathLike | Sequence[str | os.PathLike],
    target: pathlib.Path,
    progress=False,
  ) -> np.ndarray:
    """Segments a case into `target` (uint8 NIfTI with channel 0's shape and affine): one
    file, one file per channel, or one 4-D file of the model's channels."""
    with self.times('read'):
      arrays, like = self._read(source)
    mask = self.segment_arrays(arrays, like.affine, progress, like.get_filename())
    with self.times('write'):
      write_mask(mask, like, target)
    return mask

  def segment_files(self, pairs: Sequence[tuple], progress: bool = False) -> None:
    """`segment_file` of each (source, target), overlapped (`segmented`)."""
    for _ in tqdm.tqdm(
      self.segmented(pairs), total=len(pairs), desc='volumes', unit='vol', disable=not progress
    ):
      pass

  def segmented(
    self, pairs: Sequence[tuple]
  ) -> Iterator[tuple[np.ndarray, list[np.ndarray], nib.Nifti1Image]]:
    """For each (source, target): the case segmented into target, yielded as (mask, its
    channels' arrays, channel 0's image). Overlapped: while the model segments one case, a
    thread reads the next (and computes its normalization numbers) and another writes the
    previous mask; the 'read' and 'write' stages then time only what the pipeline waited
    for."""
    if not pairs:
      return
    with futures.ThreadPoolExecutor(max_workers=2) as pool:
      reading, writing = pool.submit(self._load, pairs[0][0]), None
      for k in range(len(pairs)):
        with self.times('read'):
          arrays, like, case = reading.result()
        if k + 1 < len(pairs):
          reading = pool.submit(self._load, pairs[k + 1][0])
        mask = self.segment_case(case)
        with self.times('write'):
          if writing is not None:
            writing.result()
        writing = pool.submit(write_mask, mask, like, pairs[k][1])
        yield mask, arrays, like
      with self.times('write'):
        writing.result()

  def _read(self, source) -> tuple[list[np.ndarray], nib.Nifti1Image]:
    """A case's channels, decompressed, and channel 0's image (the output's grid)."""
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    channels = volumes.load_channels(sources, len(normalization.channel_names(self.config.data)))
    return [np.asanyarray(c.dataobj) for c in channels], channels[0]

  def _load(self, source) -> tuple[list[np.ndarray], nib.Nifti1Image, volumes.CanonicalCase]:
    """`_read`, and the case oriented with its normalization numbers."""
    arrays, like = self._read(source)
    case = volumes.canonical_case(arrays, like.affine, self.config.data, like.get_filename())
    return arrays, like, case


def raw_rows(case: volumes.CanonicalCase, start: int, stop: int) -> np.ndarray:
  """Slices start:stop of a case's channels as read, [B, H, W, C]."""
  return np.stack([c[start:stop] for c in case.channels], axis=-1)


def plan_outputs(source: str, target: str, channels: int = 1) -> list[tuple[tuple, pathlib.Path]]:
  """(input files of a case, output) pairs; an output that would overwrite an input is an
  error."""
  src, dst = pathlib.Path(source).expanduser(), pathlib.Path(target).expanduser()
  cases = case_files.cases_at(src, channels)
  if src.is_file() and dst.name.endswith(NIFTI_SUFFIXES):
    pairs = [(cases[0][1], dst)]
  else:  # a folder (created if missing) receives CASE.nii.gz per case
    pairs = [(files, dst / f'{case}.nii.gz') for case, files in cases]
  resolved_inputs = {p.resolve() for files, _ in pairs for p in files}
  for _, out in pairs:
    if out.resolve() in resolved_inputs:
      raise DataError(f'--output {out} is an input file; refusing to overwrite it')
  return pairs


def predict_paths(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike | Sequence[str | os.PathLike],
  source: str,
  target: str,
  which: str,
) -> list[pathlib.Path]:
  """--mode=predict: segments a case (a NIfTI file, or its channel files) or every case in
  a folder, with the run in `workdir` or the ensemble of several runs."""
  first = workdir if isinstance(workdir, (str, os.PathLike)) else workdir[0]
  data_source.resolve_settings(config, pathlib.Path(first))  # e.g. channels, from config.json
  channels = len(config.data.channels)
  pairs = plan_outputs(source, target, channels)
  for files, _ in pairs:  # fail on a bad input before the first (slow) prediction
    volumes.case_grid(files, channels)
  predictor = Predictor(config, workdir, which)
  if len(pairs) == 1:
    predictor.segment_file(*pairs[0], progress=True)
  else:
    predictor.segment_files(pairs, progress=True)
  return [dst for _, dst in pairs]
