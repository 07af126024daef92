"""Segmenting volumes with a trained model, and scoring the test split.

A volume goes: NIfTI -> canonical axial slices, normalized and resized (data/volumes.py)
-> the model on batches of slices, spread over this process's devices (EC folded into
single convs; optional flip TTA) -> probabilities resized back and thresholded -> the
file's orientation -> optional 3-D largest connected component -> a uint8 NIfTI with
the input's exact shape and affine, written atomically, never over an input.
"""

import gzip
import os
import pathlib
from typing import Any

import jax
import ml_collections
import nibabel as nib
import numpy as np
import tqdm
from scipy import ndimage

from ecam_jax import checkpoint, configuration, evaluate, overlay, parallel, steps
from ecam_jax.atomic import write_bytes_atomic
from ecam_jax.data import layouts, source, splits, volumes
from ecam_jax.data.errors import DataError
from ecam_jax.data.layouts import NIFTI_SUFFIXES, case_id_of
from ecam_jax.models import abstract_variables, build_model, fold_ec


def largest_component(mask: np.ndarray) -> np.ndarray:
  """The largest 3-D connected component (26-connectivity) of a binary mask."""
  labelled, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
  if count <= 1:
    return mask.astype(bool)
  sizes = np.bincount(labelled.ravel())[1:]
  return labelled == (int(np.argmax(sizes)) + 1)


class Predictor:
  """A trained model ready to segment volumes on this process's devices.

  fold: EC branches folded into single 3x3 convs (same outputs, faster). tta_flip and
  largest_component default to config.eval's values.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    which: str = 'best',
    *,
    fold: bool = True,
    variables: dict | None = None,
  ):
    configuration.validate(config)
    self.config = config
    self.mesh = parallel.data_mesh(jax.local_devices())
    model = build_model(config.model)
    size = config.data.image_size
    target = parallel.abstract(abstract_variables(model, size), parallel.replicated(self.mesh))
    if variables is None:
      variables, self.meta = checkpoint.restore_variables(workdir, which, target)
    else:
      self.meta = {}
    self.folded = bool(fold and config.model.use_ec)
    if self.folded:
      variables = jax.jit(lambda v: fold_ec(v, config.model.bn_epsilon))(variables)
      model = build_model(config.model, folded=True)
    self.variables = variables
    self._step = steps.make_predict_step(model, self.mesh, config.eval.tta_flip)

  def probabilities(self, slices: np.ndarray, progress: bool = False) -> np.ndarray:
    """float32 [Z, S, S] preprocessed slices -> foreground probabilities [Z, S, S]."""
    devices = self.mesh.devices.size
    batch = max(devices, self.config.eval.batch_size // devices * devices)
    out = []
    starts = range(0, slices.shape[0], batch)
    for start in tqdm.tqdm(starts, desc='slices', unit='batch', disable=not progress, leave=False):
      chunk = slices[start : start + batch, ..., None]
      padded = parallel.pad_rows(chunk, devices)
      images = jax.device_put(padded, parallel.batch_sharded(self.mesh))
      out.append(np.asarray(self._step(self.variables, images))[: chunk.shape[0]])
    return np.concatenate(out) if out else np.zeros_like(slices)

  def segment_image(self, image: nib.Nifti1Image, progress: bool = False) -> np.ndarray:
    """A NIfTI image -> uint8 mask in the image's own voxel grid (same shape)."""
    slices, record = volumes.preprocess_image(image, self.config.data)
    prob = self.probabilities(slices, progress)
    mask = volumes.restore(prob, record, order=1) > 0.5
    if self.config.eval.largest_component:
      mask = largest_component(mask)
    return mask.astype(np.uint8)

  def segment_array(self, volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """From Python: a 3-D array (in the voxel order `affine` describes) -> uint8 mask."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
      raise ValueError(f'expected a 3-D volume, got an array of shape {volume.shape}')
    return self.segment_image(nib.Nifti1Image(volume, np.asarray(affine, np.float64)))

  def segment_file(self, source: pathlib.Path, target: pathlib.Path, progress=False) -> np.ndarray:
    """Segments `source` into `target` (uint8 NIfTI, the source's shape and affine)."""
    image = volumes.load_nifti(source)
    mask = self.segment_image(image, progress)
    write_mask(mask, image, target)
    return mask


def write_mask(mask: np.ndarray, like: nib.Nifti1Image, path: pathlib.Path) -> None:
  """uint8 NIfTI with `like`'s affine and header geometry, written atomically."""
  header = like.header.copy()
  header.set_data_dtype(np.uint8)
  out = nib.Nifti1Image(mask.astype(np.uint8), like.affine, header)
  out.set_sform(like.get_sform(), int(like.header['sform_code']))
  out.set_qform(like.get_qform(), int(like.header['qform_code']))
  out.header['scl_slope'], out.header['scl_inter'] = 1.0, 0.0
  data = out.to_bytes()
  if path.name.endswith('.gz'):
    data = gzip.compress(data, compresslevel=6)
  write_bytes_atomic(path, data)


def _nifti_inputs(source: pathlib.Path) -> list[pathlib.Path]:
  if source.is_file():
    return [source]
  if source.is_dir():
    files = layouts.nifti_files(source)
    if not files:
      raise DataError(f'--input {source}: no .nii or .nii.gz files in this folder')
    return files
  raise DataError(f'--input {source} does not exist')


def plan_outputs(source: str, target: str) -> list[tuple[pathlib.Path, pathlib.Path]]:
  """(input, output) pairs; an output that would overwrite an input is an error."""
  src, dst = pathlib.Path(source).expanduser(), pathlib.Path(target).expanduser()
  inputs = _nifti_inputs(src)
  if src.is_file() and dst.name.endswith(NIFTI_SUFFIXES):
    pairs = [(src, dst)]
  else:  # a folder (created if missing) receives CASE.nii.gz per input
    pairs = [(p, dst / f'{case_id_of(p)}.nii.gz') for p in inputs]
  resolved_inputs = {p.resolve() for p in inputs}
  for _, out in pairs:
    if out.resolve() in resolved_inputs:
      raise DataError(f'--output {out} is an input file; refusing to overwrite it')
  return pairs


def predict_paths(
  config: ml_collections.ConfigDict, workdir: str, source: str, target: str, which: str
) -> list[pathlib.Path]:
  """--mode=predict: segments a NIfTI file or every one in a folder."""
  pairs = plan_outputs(source, target)
  for src, _ in pairs:  # fail on a bad input before the first (slow) prediction
    volumes.header_info(src)
  predictor = Predictor(config, workdir, which)
  for src, dst in tqdm.tqdm(pairs, desc='volumes', unit='vol', disable=len(pairs) == 1):
    predictor.segment_file(src, dst, progress=len(pairs) == 1)
  return [dst for _, dst in pairs]


def evaluate_test_split(
  config: ml_collections.ConfigDict, workdir: str, which: str, split: str = 'test'
) -> dict[str, Any]:
  """--mode=eval: segments the `split` cases from their original files and scores them
  in their own geometry (mm spacing) into WORKDIR/eval/summary.{json,md}; the
  predictions go to WORKDIR/eval/predictions and overlays to WORKDIR/eval/overlays."""
  workdir = pathlib.Path(workdir)
  source.resolve_root(config, workdir)
  cases = {c.case_id: c for c in layouts.discover_cases(config.data)}
  case_splits = splits.read_splits_file(workdir / 'splits.json', sorted(cases))
  if not case_splits.get(split):
    raise DataError(f'{workdir / "splits.json"}: the {split!r} split has no cases to score')
  predictor = Predictor(config, workdir, which)
  out = workdir / 'eval'
  scores = {}
  for case_id in tqdm.tqdm(case_splits[split], desc=f'eval {split}', unit='case'):
    case = cases[case_id]
    image = volumes.load_nifti(case.image)
    mask = predictor.segment_file(case.image, out / 'predictions' / f'{case_id}.nii.gz')
    label_img = volumes.load_nifti(case.label)
    label = np.isin(np.asanyarray(label_img.dataobj), config.data.foreground_labels)
    axis = evaluate.axial_axis(label_img.affine)
    scores[case_id] = evaluate.score_case(
      mask > 0, label, label_img.header.get_zooms()[:3], slice_axis=axis
    )
    _case_overlay(image, label, mask > 0, axis, config, out / 'overlays' / f'{case_id}.png')
  summary = evaluate.summarize(scores)
  summary['checkpoint'] = {'which': which, **predictor.meta}
  evaluate.write_summary(summary, out)
  print(evaluate.markdown_table(summary).splitlines()[-1])
  return summary


def _case_overlay(image, label, pred, axis, config, path: pathlib.Path) -> None:
  """A few slices with the most label (or prediction) voxels, contours over the image."""
  areas = (label | pred).sum(axis=tuple(a for a in range(3) if a != axis))
  picks = np.argsort(-areas, kind='stable')[: config.eval.overlay_slices]
  data = volumes.normalize(np.asanyarray(image.dataobj), config.data)
  tiles = [
    overlay.overlay(np.take(data, z, axis), np.take(label, z, axis), np.take(pred, z, axis))
    for z in sorted(picks)
  ]
  path.parent.mkdir(parents=True, exist_ok=True)
  overlay.write_png(path, overlay.tile(tiles, columns=len(tiles)))
