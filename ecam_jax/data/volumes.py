"""Reading a NIfTI volume and turning it into what the network sees, reversibly.

The canonical array is `[Z, H, W]` with nibabel axis codes ('S', 'P', 'L'): axis 0 runs
from inferior to superior, rows from anterior (row 0, the top of the image) to posterior,
columns from the patient's right (column 0, the image's left) to the patient's left: the
radiological view of an axial slice, whatever the file's affine. A case has one or
several channels (one file each, or one 4-D file), all on one grid; each is normalized by
its name (data/normalization.py: CT a HU window scaled to [0, 1] or nnU-Net's CT scheme;
MR and any other name a percentile clip and z-score per volume) and slices are resized
in-plane with `scipy.ndimage.zoom` (grid mode: pixel areas, not pixel centres, are
aligned), giving [Z, S, S, C]. A `VolumeRecord` keeps what `restore` needs to put a
prediction back into the file's voxel grid (channel 0's).
"""

import dataclasses
import gzip
import os
import pathlib
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import ml_collections
import nibabel as nib
import numpy as np
import scipy.ndimage

from ecam_jax import classes
from ecam_jax.data.normalization import Normalization, channel_names, normalization, normalize
from ecam_jax.errors import DataError

CANONICAL_AXCODES = ('S', 'P', 'L')
AFFINE_TOLERANCE_MM = 1e-3  # image and label affines may differ by rounding, not more
# What reading a damaged file raises, depending on where the damage is.
_READ_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError)


@dataclasses.dataclass(frozen=True)
class VolumeRecord:
  """What undoing the preprocessing of one volume needs (JSON-serialisable)."""

  shape: tuple[int, int, int]  # the file's array shape
  affine: tuple[tuple[float, ...], ...]  # the file's 4x4 affine
  transform: tuple[tuple[int, int], ...]  # nibabel ornt: file axis i -> canonical [axis, flip]
  spacing: tuple[float, float, float]  # mm along the canonical axes (z, row, column)
  canonical_shape: tuple[int, int, int]  # [Z, H, W] before in-plane resizing

  def to_dict(self) -> dict[str, Any]:
    return {f.name: _lists(getattr(self, f.name)) for f in dataclasses.fields(self)}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'VolumeRecord':
    return cls(
      shape=tuple(int(v) for v in d['shape']),
      affine=tuple(tuple(float(v) for v in row) for row in d['affine']),
      transform=tuple((int(a), int(f)) for a, f in d['transform']),
      spacing=tuple(float(v) for v in d['spacing']),
      canonical_shape=tuple(int(v) for v in d['canonical_shape']),
    )


def _lists(value):
  return [_lists(v) for v in value] if isinstance(value, tuple) else value


def _open(path: str | os.PathLike, channels: int = 1) -> nib.Nifti1Image:
  """The file's image, its header checked: one 3-D volume, or with `channels` > 1 a 4-D
  [x, y, z, channels] one."""
  path = pathlib.Path(path)
  if not path.name.endswith(('.nii', '.nii.gz')):
    raise DataError(f'{path}: expected a NIfTI file (.nii or .nii.gz)')
  if not path.is_file():
    raise DataError(f'{path} does not exist')
  try:
    img = nib.load(path)
  except (nib.filebasedimages.ImageFileError, *_READ_ERRORS) as e:
    raise DataError(f'{path}: not readable as NIfTI, corrupt or truncated ({e})') from None
  if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
    raise DataError(f'{path}: expected a NIfTI image, found {type(img).__name__}')
  shape = _volume_shape(img.shape)
  if channels > 1 and (len(shape) != 4 or shape[3] != channels):
    raise DataError(
      f'{path}: array shape {img.shape}; expected a 4-D volume of {channels} channels '
      '[x, y, z, C] (dataset.json "modality" names that many)'
    )
  if channels == 1 and len(shape) != 3:
    raise DataError(f'{path}: array shape {img.shape}; expected one 3-D volume')
  return img


def _volume_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """Drops trailing singleton axes ([X, Y, Z, 1] is a 3-D volume saved as 4-D)."""
  shape = tuple(shape)
  while len(shape) > 3 and shape[-1] == 1:
    shape = shape[:-1]
  return shape


def header_info(
  path: str | os.PathLike, channels: int = 1
) -> tuple[tuple[int, int, int], np.ndarray]:
  """(3-D shape, 4x4 affine) from the header alone: cheap checks before reading any data.
  With `channels` > 1 the file is a 4-D one of that many channels."""
  img = _open(path, channels)
  return _volume_shape(img.shape)[:3], img.affine


def _check_grid(path, shape, affine, reference, ref_shape, ref_affine, what: str) -> None:
  if shape != ref_shape:
    raise DataError(f'{path}: shape {shape} differs from {what} {reference} {ref_shape}')
  if not np.allclose(affine, ref_affine, atol=AFFINE_TOLERANCE_MM, rtol=0):
    raise DataError(
      f'{path}: affine differs from {what} {reference} by up to '
      f'{np.abs(affine - ref_affine).max():.4g} (allowed {AFFINE_TOLERANCE_MM}):\n{affine}\n'
      f'vs\n{ref_affine}'
    )


def case_grid(
  images: Sequence[str | os.PathLike], channels: int = 1
) -> tuple[tuple[int, int, int], np.ndarray]:
  """(3-D shape, affine) of a case's image: one file per channel (all on channel 0's grid)
  or one 4-D file of `channels` channels; from the headers alone. A channel file on
  another grid, or a 4-D file with another channel count, is a DataError naming it."""
  if len(images) == 1:
    return header_info(images[0], channels)
  if len(images) != channels:
    raise DataError(f'{images[0]}: {len(images)} channel files, expected {channels}')
  shape, affine = header_info(images[0])
  for path in images[1:]:
    _check_grid(path, *header_info(path), images[0], shape, affine, 'channel 0')
  return shape, affine


def check_pair(
  images: Sequence[str | os.PathLike], label_path: str | os.PathLike, channels: int = 1
) -> None:
  """Raises DataError when a case's channels, or its label, do not lie on one voxel grid."""
  shape, affine = case_grid(images, channels)
  _check_grid(label_path, *header_info(label_path), images[0], shape, affine, 'its image')


def load_nifti(path: str | os.PathLike, channels: int = 1) -> nib.Nifti1Image:
  """The file's image with its data read into memory and checked.

  Raises DataError naming the file when it is not NIfTI, is corrupt or truncated, is not
  one 3-D volume (a 4-D one of `channels` channels when that is > 1), or has NaN or
  infinite voxels.
  """
  img = _open(path, channels)
  try:
    data = np.asanyarray(img.dataobj)
  except _READ_ERRORS as e:
    raise DataError(f'{path}: the data cannot be read, corrupt or truncated ({e})') from None
  data = data.reshape(_volume_shape(data.shape))
  if data.dtype.kind == 'f':
    bad = np.size(data) - np.count_nonzero(np.isfinite(data))
    if bad:
      raise DataError(f'{path}: {bad} NaN or infinite voxels; expected finite values')
  return type(img)(data, img.affine, img.header)


def load_channels(images: Sequence[str | os.PathLike], channels: int = 1) -> list[nib.Nifti1Image]:
  """A case's channels as 3-D images on one grid: one file per channel, or one 4-D file
  [x, y, z, C] split along its last axis (MSD's multi-modal tasks). Checked as
  `load_nifti` and `case_grid` check them."""
  case_grid(images, channels)
  if len(images) == 1 and channels > 1:
    img = load_nifti(images[0], channels)
    data = np.asanyarray(img.dataobj)
    header = img.header.copy()
    header.set_data_shape(data.shape[:3])
    return [nib.Nifti1Image(data[..., c], img.affine, header) for c in range(channels)]
  return [load_nifti(path) for path in images]


def integer_labels(img: nib.Nifti1Image, path: str | os.PathLike) -> np.ndarray:
  """The label map of a label volume as integers (file order and shape).

  Float storage (or a scaled header) is accepted when every value is a whole number; any
  other value raises DataError naming the file. Training's cache and the evaluator of
  prediction folders both read label files through this.
  """
  data = np.asanyarray(img.dataobj)
  if data.dtype.kind in 'iub':
    return data
  if data.dtype.kind != 'f' or not np.array_equal(data, np.round(data)):
    raise DataError(f'{path}: label values are not integers; a label map holds whole numbers')
  return data.astype(np.int64)


def check_label_values(
  img: nib.Nifti1Image, declared: tuple[int, ...], path: str | os.PathLike
) -> None:
  """Raises DataError when a label volume holds a non-integer value or one outside the
  declared set."""
  values = np.unique(integer_labels(img, path))
  extra = sorted(set(values.tolist()) - set(declared))
  if extra:
    raise DataError(
      f'{path}: label values {extra} are not declared; expected values in {list(declared)} '
      '(dataset.json "labels" or config.data.label_values)'
    )


def to_canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, VolumeRecord]:
  """[Z, H, W] in CANONICAL_AXCODES order (a transpose and flips, no resampling)."""
  transform = nib.orientations.ornt_transform(
    nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(CANONICAL_AXCODES)
  )
  canonical = nib.orientations.apply_orientation(data, transform)  # [Z, H, W]
  file_spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
  spacing = [0.0] * 3
  for axis, (new_axis, _) in enumerate(transform):
    spacing[int(new_axis)] = float(file_spacing[axis])
  record = VolumeRecord(
    shape=tuple(int(s) for s in data.shape),
    affine=tuple(tuple(float(v) for v in row) for row in np.asarray(affine)),
    transform=tuple((int(a), int(f)) for a, f in transform),
    spacing=tuple(spacing),
    canonical_shape=tuple(int(s) for s in canonical.shape),
  )
  return canonical, record


def from_canonical(canonical: np.ndarray, record: VolumeRecord) -> np.ndarray:
  """The inverse of `to_canonical`: the array in the file's voxel order and shape."""
  inverse = np.zeros((3, 2))  # canonical axis -> [file axis, flip]
  for axis, (canonical_axis, flip) in enumerate(record.transform):
    inverse[canonical_axis] = (axis, flip)
  return nib.orientations.apply_orientation(canonical, inverse)


def resize_inplane(array: np.ndarray, size: int | tuple[int, int], order: int) -> np.ndarray:
  """[Z, H, W] -> [Z, size, size] (or [Z, *size]); order 1 for images, 0 for labels.

  scipy.ndimage.zoom in grid mode with edge replication; axis 0 is left untouched (zoom 1
  samples exactly on the voxels), so a volume's slices stay its slices.
  """
  out_h, out_w = (size, size) if isinstance(size, int) else size
  z, h, w = array.shape
  if (h, w) == (out_h, out_w):
    return np.array(array)
  return scipy.ndimage.zoom(
    array, (1, out_h / h, out_w / w), order=order, mode='nearest', grid_mode=True
  )


def preprocess_image(
  channels: Sequence[nib.Nifti1Image | str | os.PathLike] | nib.Nifti1Image | str | os.PathLike,
  data_config: ml_collections.ConfigDict,
) -> tuple[np.ndarray, VolumeRecord]:
  """What the network sees of a case: float32 [Z, S, S, C], S = data.image_size, C the
  channels (images or files, as `load_channels` gives them; one for a single channel), and
  channel 0's record."""
  single = isinstance(channels, (nib.Nifti1Image, str, os.PathLike))
  images = [channels] if single else list(channels)
  images = [img if isinstance(img, nib.Nifti1Image) else load_nifti(img) for img in images]
  check_channel_count(len(images), data_config, images[0].get_filename() or 'the image')
  return preprocess_arrays(
    [np.asanyarray(img.dataobj) for img in images], images[0].affine, data_config
  )


def check_channel_count(count: int, data_config: ml_collections.ConfigDict, where: str) -> None:
  """A case of `count` channels where the model takes data.channels' count."""
  names = channel_names(data_config)
  if count != len(names):
    raise DataError(f'{where}: {count} channels; the model takes {len(names)} ({list(names)})')


class CanonicalCase(NamedTuple):
  """A case read and oriented, before anything is resized: what segmenting it needs."""

  channels: list[np.ndarray]  # [Z, H, W] each, in CANONICAL_AXCODES order (views, as read)
  record: VolumeRecord  # channel 0's
  numbers: list[Normalization]  # each channel's


def canonical_case(
  arrays: Sequence[np.ndarray],
  affine: np.ndarray,
  data_config: ml_collections.ConfigDict,
  where: str = 'the image',
) -> CanonicalCase:
  """Channels already read (one array per channel, on one grid; `where` names them in an
  error) -> their canonical views and each one's normalization numbers (the only pass over
  the whole volume, for the schemes that need one)."""
  check_channel_count(len(arrays), data_config, where)
  channels, record = [], None
  for array in arrays:
    canonical, rec = to_canonical(array, affine)  # [Z, H, W]
    channels.append(canonical)
    record = record or rec
  numbers = [normalization(c, data_config, i) for i, c in enumerate(channels)]
  return CanonicalCase(channels, record, numbers)


def preprocess_arrays(
  arrays: Sequence[np.ndarray], affine: np.ndarray, data_config: ml_collections.ConfigDict
) -> tuple[np.ndarray, VolumeRecord]:
  """`preprocess_image` of channels already read (one array per channel, on one grid)."""
  out, record = [], None
  for c, array in enumerate(arrays):
    canonical, rec = to_canonical(array, affine)  # [Z, H, W]
    record = record or rec
    out.append(resize_inplane(normalize(canonical, data_config, c), data_config.image_size, 1))
  return np.stack(out, axis=-1), record


def preprocess_label(img: nib.Nifti1Image, data_config: ml_collections.ConfigDict) -> np.ndarray:
  """uint8 [Z, S, S] training targets (`classes.index_lookup`): with data.merge_foreground
  1 where the label value is in data.foreground_labels, else each class's output index
  (0 for a value no class names). Nearest neighbour only: no value is ever blended."""
  data = integer_labels(img, img.get_filename() or 'label')
  target = classes.index_lookup(data_config, (int(data.max(initial=0)),))[np.maximum(data, 0)]
  canonical, _ = to_canonical(target, img.affine)
  return resize_inplane(canonical, data_config.image_size, 0)


def restore(volume: np.ndarray, record: VolumeRecord, order: int | None = None) -> np.ndarray:
  """A [Z, S, S] prediction back in the file's voxel order and shape.

  Masks (integer or bool) are resized with nearest neighbour and probabilities (float)
  linearly, unless `order` says otherwise. The result lies on the grid of `record.affine`.
  """
  if volume.shape[0] != record.canonical_shape[0]:
    raise ValueError(
      f'prediction has {volume.shape[0]} slices; the volume has {record.canonical_shape[0]}'
    )
  if order is None:
    order = 1 if np.issubdtype(volume.dtype, np.floating) else 0
  if volume.dtype == bool:
    return restore(volume.astype(np.uint8), record, order).astype(bool)
  resized = resize_inplane(volume, tuple(record.canonical_shape[1:]), order)
  return from_canonical(resized, record)
