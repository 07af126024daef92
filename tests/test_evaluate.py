"""Folder scoring on NIfTI files written here, including every error a user can cause.
(The scores themselves are tested in test_scoring.py.)"""

import nibabel as nib
import numpy as np
import pytest

from ecam_jax import evaluate

# Folder scoring. Arrays are [X, Y, Z] under a diagonal (RAS) affine, so axis 2 is axial;
# the permuted affine makes axis 0 axial and 2.5 mm thick instead.
DIAGONAL = np.diag([0.8, 0.8, 2.5, 1.0])
PERMUTED = np.array([[0, 0, 0.8, 0], [0, 0.8, 0, 0], [2.5, 0, 0, 0], [0, 0, 0, 1.0]])


def _save(path, data, affine=DIAGONAL):
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(np.asarray(data), affine), path)


def _folders(tmp_path, affine=DIAGONAL, axial=2):
  """Case 'a': one label voxel (value 2) and one predicted voxel (value 1) 3 slices apart
  along the axial axis, plus a value-3 voxel that is not foreground; case 'b': equal."""
  a_pred, a_label = np.zeros((6, 6, 6), np.uint8), np.zeros((6, 6, 6), np.uint8)
  a_label[1, 2, 1] = 2
  a_pred[(1, 2, 4) if axial == 2 else (4, 2, 1)] = 1
  a_pred[5, 5, 5] = 3
  b = np.zeros((6, 6, 6), np.uint8)
  b[2:4, 2:4, 2:4] = 1
  _save(tmp_path / 'pred' / 'a.nii.gz', a_pred, affine)
  _save(tmp_path / 'labels' / 'a.nii.gz', a_label, affine)
  _save(tmp_path / 'pred' / 'b.nii', b, affine)  # .nii matches .nii.gz
  _save(tmp_path / 'labels' / 'b.nii.gz', b, affine)
  return tmp_path / 'pred', tmp_path / 'labels'


@pytest.mark.parametrize(('affine', 'axial'), [(DIAGONAL, 2), (PERMUTED, 0)])
def test_evaluate_folders(tmp_path, affine, axial):
  preds, labels = _folders(tmp_path, affine, axial)
  assert evaluate.axial_axis(affine) == axial
  summary = evaluate.evaluate_folders(preds, labels, out_dir=tmp_path / 'out')
  a, b = summary['cases']['a'], summary['cases']['b']
  assert (a['tp'], a['fp'], a['fn']) == (0, 1, 1)  # the value-3 voxel is background
  assert a['hd95_mm'] == pytest.approx(3 * 2.5) and a['assd_mm'] == pytest.approx(3 * 2.5)
  # Slices along the axial axis: 6, one with only the label, one with only the prediction.
  assert (a['slices'], a['both_empty_slices']) == (6, 4)
  assert (a['empty_label_slices'], a['empty_prediction_slices']) == (1, 1)
  assert b['dsc'] == 1.0 and b['hd95_mm'] == 0.0
  assert summary['mean']['hd95_mm'] == pytest.approx(3.75)
  assert (tmp_path / 'out' / 'summary.json').is_file()


def test_foreground_labels_apply_to_both_files(tmp_path):
  preds, labels = _folders(tmp_path)
  summary = evaluate.evaluate_folders(preds, labels, foreground_labels=(1,))
  a = summary['cases']['a']
  assert (a['tp'], a['fp'], a['fn']) == (0, 1, 0)  # the label's value 2 is now background


def test_cli_prints_the_mean_row(tmp_path, capsys):
  preds, labels = _folders(tmp_path)
  out_dir = tmp_path / 'out'
  evaluate.main(['--predictions', str(preds), '--labels', str(labels), '--output', str(out_dir)])
  out = capsys.readouterr().out
  assert (out_dir / 'summary.md').is_file()
  assert '| **mean** | 0.5000 |' in out and '| a |' not in out
  with pytest.raises(SystemExit) as exit_info:
    evaluate.main(['--predictions', str(tmp_path / 'nowhere'), '--labels', str(labels)])
  assert exit_info.value.code == 1
  assert 'nowhere does not exist' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    evaluate.main(['--predictions', str(preds), '--labels', str(labels), '--foreground', 'a'])


def _truncated_gzip(path):
  _save(path, np.random.default_rng(0).integers(0, 3, (20, 20, 20)).astype(np.uint8))
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def _blank(shape=(6, 6, 6), dtype=np.uint8):
  return np.zeros(shape, dtype)


@pytest.mark.parametrize(
  ('break_it', 'message'),
  [
    pytest.param(
      lambda preds, labels: _save(preds / 'c.nii.gz', _blank()),
      r'no label .*/pred/c\.nii\.gz',
      id='no-label',
    ),
    pytest.param(
      lambda preds, labels: _save(labels / 'c.nii', _blank()),
      r'no prediction .*/labels/c\.nii',
      id='no-pred',
    ),
    pytest.param(
      lambda preds, labels: _save(preds / 'b.nii', _blank((6, 6, 5))), r'b\.nii: shape', id='shape'
    ),
    pytest.param(
      lambda preds, labels: _save(preds / 'b.nii', _blank(), np.diag([1, 1, 2.5, 1])),
      r'b\.nii: affine differs',
      id='affine',
    ),
    pytest.param(
      lambda preds, labels: (preds / 'a.nii.gz').write_bytes(b'not nifti'),
      r'a\.nii\.gz: not readable as NIfTI',
      id='not-nifti',
    ),
    pytest.param(
      lambda preds, labels: _truncated_gzip(labels / 'a.nii.gz'),
      r'a\.nii\.gz: the data cannot be read, corrupt or truncated',
      id='truncated-gzip',
    ),
    pytest.param(
      lambda preds, labels: _save(preds / 'b.nii', np.full((6, 6, 6), 0.5)),
      r'b\.nii: label values are not integers',
      id='not-integer',
    ),
    pytest.param(
      lambda preds, labels: _save(preds / 'b.nii', _blank((6, 6, 6, 2))),
      r'b\.nii: array shape \(6, 6, 6, 2\); expected one 3-D volume',
      id='4d',
    ),
    pytest.param(
      lambda preds, labels: _save(preds / 'b.nii.gz', _blank()),
      r"'b' is in two files",
      id='duplicate',
    ),
    pytest.param(
      lambda preds, labels: [f.unlink() for f in labels.iterdir()],
      r'labels holds no \.nii',
      id='no-labels',
    ),
  ],
)
def test_evaluate_folders_errors_name_the_file(tmp_path, break_it, message):
  preds, labels = _folders(tmp_path)
  break_it(preds, labels)
  with pytest.raises(ValueError, match=message):
    evaluate.evaluate_folders(preds, labels, out_dir=tmp_path / 'out')
  assert not (tmp_path / 'out').exists()  # nothing half-written
