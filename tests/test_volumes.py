"""Loading, canonical orientation, normalization, resizing and their exact undoing."""

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from ecam_jax.data import normalization, volumes
from ecam_jax.errors import DataError

import nifti_fixtures as fx

AFFINES = {'RAS': fx.RAS, 'LPS': fx.LPS, 'KiTS': fx.KITS}


def _world(affine, shape):
  """[3, *shape]: the world (RAS+) coordinate of every voxel."""
  ijk = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing='ij'))
  return np.einsum('ab,b...->a...', affine[:3, :3], ijk) + affine[:3, 3, None, None, None]


@pytest.mark.parametrize('name', sorted(AFFINES))
def test_canonical_axes_are_superior_posterior_left(name):
  affine, shape = AFFINES[name], (5, 6, 7)
  x, y, z = (volumes.to_canonical(c, affine)[0] for c in _world(affine, shape))
  # Axis 0 towards superior (+z), rows towards posterior (-y), columns towards left (-x).
  assert (np.diff(z, axis=0) > 0).all() and (np.diff(z, axis=1) == 0).all()
  assert (np.diff(y, axis=1) < 0).all() and (np.diff(y, axis=2) == 0).all()
  assert (np.diff(x, axis=2) < 0).all() and (np.diff(x, axis=0) == 0).all()


@pytest.mark.parametrize('name', sorted(AFFINES))
def test_canonicalize_then_restore_is_exact(name):
  affine = AFFINES[name]
  data = np.random.default_rng(0).integers(0, 3, (8, 12, 16)).astype(np.uint8)
  canonical, record = volumes.to_canonical(data, affine)
  np.testing.assert_allclose(record.spacing, (3.0, 0.8, 0.8))
  assert record.canonical_shape == canonical.shape
  np.testing.assert_array_equal(volumes.restore(canonical, record), data)


@pytest.mark.parametrize('name', sorted(AFFINES))
def test_restore_after_resize_is_exact_on_block_labels(name):
  affine = AFFINES[name]
  file_shape = (6, 20, 16) if name == 'KiTS' else (16, 20, 6)  # canonical [6, 20, 16]
  _, record = volumes.to_canonical(np.zeros(file_shape), affine)
  blocks = np.kron(np.random.default_rng(1).integers(0, 2, (6, 5, 4)), np.ones((1, 4, 4)))
  data = volumes.from_canonical(blocks.astype(np.uint8), record)  # in the file's order
  assert data.shape == file_shape
  small = volumes.resize_inplane(volumes.to_canonical(data, affine)[0], (10, 8), 0)
  np.testing.assert_array_equal(volumes.restore(small, record), data)


def test_restore_probabilities_linear_and_bool_masks():
  data = np.zeros((4, 10, 6), np.float32)
  canonical, record = volumes.to_canonical(data, fx.LPS)
  probs = np.full((canonical.shape[0], 8, 8), 0.25, np.float32)
  out = volumes.restore(probs, record)
  assert out.shape == data.shape and out.dtype == np.float32
  np.testing.assert_allclose(out, 0.25)
  mask = volumes.restore(np.ones((canonical.shape[0], 8, 8), bool), record)
  assert mask.dtype == bool and mask.all() and mask.shape == data.shape


def test_record_round_trips_through_json():
  _, record = volumes.to_canonical(np.zeros((3, 4, 5)), fx.KITS)
  again = volumes.VolumeRecord.from_dict(json.loads(json.dumps(record.to_dict())))
  assert again == record


def test_normalize_each_channel_by_its_name():
  """CT: the window; MR (any other name): percentile clip and z-score; nnU-Net's noNorm,
  rescale_to_0_1 and rgb_to_0_1 as named; nnU-Net's CT scheme with its statistics."""
  data = fx.config().data
  data.channels = ('CT', 'MR', 'noNorm', 'Rescale_to_0_1', 'rgb_to_0_1', 'T2')
  hu = np.array([-1000, -100, 70, 240, 3000], np.int16)
  np.testing.assert_allclose(normalization.normalize(hu, data, 0), [0, 0, 0.5, 1, 1], atol=1e-6)
  data.mr_percentiles = (10.0, 90.0)
  mr = np.concatenate([np.linspace(0, 100, 1001), [1e6]])
  for channel in (1, 5):
    out = normalization.normalize(mr, data, channel)
    assert out.dtype == np.float32
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-4
    assert out.max() == out[-1] and np.isclose(out[-1], out[out < out[-1] + 1].max())  # clipped
  np.testing.assert_array_equal(normalization.normalize(hu, data, 2), hu.astype(np.float32))
  np.testing.assert_allclose(normalization.normalize(hu, data, 3), (hu + 1000) / 4000, atol=1e-7)
  np.testing.assert_allclose(normalization.normalize(hu, data, 4), hu / 255, rtol=1e-6)
  data.ct_normalization = 'nnunet'
  data.ct_statistics = ((-50.0, 150.0, 40.0, 20.0),)
  expected = (np.clip(hu, -50, 150) - 40) / 20
  np.testing.assert_allclose(normalization.normalize(hu, data, 0), expected, rtol=1e-6)


def test_resize_inplane_orders():
  label = np.kron(np.eye(4, dtype=np.uint8)[None], np.ones((1, 4, 4), np.uint8))  # [1, 16, 16]
  np.testing.assert_array_equal(
    volumes.resize_inplane(label, 8, 0)[0], np.kron(np.eye(4), np.ones((2, 2)))
  )
  ramp = np.broadcast_to(np.arange(16, dtype=np.float32), (2, 16, 16))
  half = volumes.resize_inplane(ramp, 8, 1)
  np.testing.assert_allclose(half[0, 0], np.arange(8) * 2 + 0.5)  # grid mode: area-aligned
  assert volumes.resize_inplane(ramp, 16, 1).shape == (2, 16, 16)


def test_preprocess_image_from_file(tmp_path):
  image, _ = fx.volume(0, (24, 20, 6))
  path = fx.write_nifti(tmp_path / 'x.nii.gz', image, fx.LPS)
  data = fx.config(modality='CT').data
  data.channels = ('CT',)
  x, record = volumes.preprocess_image(path, data)
  assert x.shape == (6, 32, 32, 1) and x.dtype == np.float32
  assert x.min() >= 0 and x.max() <= 1
  assert record.shape == (24, 20, 6) and record.canonical_shape == (6, 20, 24)
  np.testing.assert_allclose(record.affine, fx.LPS)


def test_preprocess_label_is_binary_foreground(tmp_path):
  _, label = fx.volume(0, (32, 32, 6))
  img = nib.Nifti1Image(label, fx.LPS)
  data = fx.config(foreground_labels=(1, 2)).data
  y = volumes.preprocess_label(img, data)
  assert y.dtype == np.uint8 and set(np.unique(y)) == {0, 1}
  np.testing.assert_array_equal(y, volumes.to_canonical((label > 0).astype(np.uint8), fx.LPS)[0])
  data.foreground_labels = (2,)
  assert volumes.preprocess_label(img, data).sum() == (label == 2).sum()


# --- bad input: every error names the file and the problem -----------------------------------


def test_not_nifti(tmp_path):
  bad = tmp_path / 'x.nii.gz'
  bad.write_bytes(gzip.compress(b'this is not a NIfTI header' * 20))
  with pytest.raises(DataError, match=rf'{bad}: not readable as NIfTI'):
    volumes.load_nifti(bad)
  with pytest.raises(DataError, match=r'x\.mha: expected a NIfTI file'):
    volumes.load_nifti(tmp_path / 'x.mha')


def test_truncated_gzip(tmp_path):
  path = fx.write_nifti(tmp_path / 'x.nii.gz', fx.volume(0)[0])
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with pytest.raises(DataError, match=rf'{path}: the data cannot be read, corrupt or truncated'):
    volumes.load_nifti(path)


def test_truncated_uncompressed(tmp_path):
  path = fx.write_nifti(tmp_path / 'x.nii', fx.volume(0)[0])
  path.write_bytes(path.read_bytes()[:600])
  with pytest.raises(DataError, match=rf'{path}: .*corrupt or truncated'):
    volumes.load_nifti(path)


def test_4d_rejected_trailing_singleton_accepted(tmp_path):
  path = fx.write_nifti(tmp_path / 'x.nii.gz', np.zeros((4, 4, 4, 2), np.int16))
  with pytest.raises(DataError, match=r'x\.nii\.gz: array shape \(4, 4, 4, 2\); expected one 3-D'):
    volumes.load_nifti(path)
  path = fx.write_nifti(tmp_path / 'y.nii.gz', np.ones((4, 5, 6, 1), np.int16))
  assert volumes.load_nifti(path).shape == (4, 5, 6)


def test_nan_voxels(tmp_path):
  data = np.zeros((4, 4, 4), np.float32)
  data[1, 2, 3] = np.nan
  path = fx.write_nifti(tmp_path / 'x.nii.gz', data)
  with pytest.raises(DataError, match=r'x\.nii\.gz: 1 NaN or infinite voxels'):
    volumes.load_nifti(path)


def test_image_and_label_shapes_or_affines_differ(tmp_path):
  image = fx.write_nifti(tmp_path / 'i.nii.gz', np.zeros((4, 4, 4), np.int16))
  label = fx.write_nifti(tmp_path / 'l.nii.gz', np.zeros((4, 4, 5), np.uint8))
  with pytest.raises(DataError, match=r'l\.nii\.gz: shape \(4, 4, 5\) differs from its image'):
    volumes.check_pair([image], label)
  label = fx.write_nifti(tmp_path / 'l.nii.gz', np.zeros((4, 4, 4), np.uint8), fx.RAS)
  with pytest.raises(DataError, match=r'l\.nii\.gz: affine differs from its image'):
    volumes.check_pair([image], label)
  shifted = fx.LPS.copy()
  shifted[0, 3] += 1e-5  # rounding, not a different grid
  volumes.check_pair([image], fx.write_nifti(tmp_path / 'l.nii.gz', np.zeros((4, 4, 4)), shifted))


def test_label_values_outside_declared_set(tmp_path):
  label = np.zeros((4, 4, 4), np.uint8)
  label[0, 0, 0] = 7
  img = nib.Nifti1Image(label, fx.LPS)
  with pytest.raises(DataError, match=r'l\.nii\.gz: label values \[7\] are not declared'):
    volumes.check_label_values(img, (0, 1, 2), tmp_path / 'l.nii.gz')
  volumes.check_label_values(nib.Nifti1Image(label.astype(np.float32), fx.LPS), (0, 7), 'l')
  with pytest.raises(DataError, match='not integers'):
    volumes.check_label_values(nib.Nifti1Image(label * 0.5, fx.LPS), (0, 1), 'l')


def test_integer_labels_accepts_whole_floats_and_refuses_fractions():
  label = np.zeros((4, 4, 4), np.float32)
  label[1, 2, 3] = 2.0
  out = volumes.integer_labels(nib.Nifti1Image(label, fx.LPS), 'l')
  assert out.dtype.kind == 'i' and out[1, 2, 3] == 2 and out.sum() == 2
  stored = np.zeros((4, 4, 4), np.uint8)
  assert volumes.integer_labels(nib.Nifti1Image(stored, fx.LPS), 'l').dtype == np.uint8
  label[0, 0, 0] = 0.5
  with pytest.raises(DataError, match=r'seg\.nii: label values are not integers'):
    volumes.integer_labels(nib.Nifti1Image(label, fx.LPS), 'seg.nii')
