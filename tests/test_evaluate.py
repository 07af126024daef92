"""Scores checked against values worked out by hand; folder scoring on NIfTI files written
here, including every error a user can cause."""

import json

import nibabel as nib
import numpy as np
import pytest

from ecam_jax import evaluate

SPACING = (2.5, 0.8, 0.8)  # anisotropic: a wrong axis order gives a wrong distance


def test_counts_and_ratios_on_a_tiny_array():
  pred = np.array([1, 1, 1, 0, 0], bool)
  label = np.array([1, 0, 0, 1, 0], bool)
  assert evaluate.confusion_counts(pred, label) == (1, 2, 1)
  scores = evaluate.ratios(1, 2, 1)
  assert scores['dsc'] == pytest.approx(2 / 5)
  assert scores['sensitivity'] == pytest.approx(1 / 2)
  assert scores['precision'] == pytest.approx(1 / 3)


def test_ratios_are_nan_where_undefined():
  assert all(np.isnan(v) for v in evaluate.ratios(0, 0, 0).values())
  only_fp = evaluate.ratios(0, 3, 0)
  assert only_fp['dsc'] == 0 and only_fp['precision'] == 0 and np.isnan(only_fp['sensitivity'])
  per_slice = evaluate.ratios(np.array([2, 0]), np.array([0, 0]), np.array([2, 1]))
  np.testing.assert_allclose(per_slice['sensitivity'], [0.5, 0.0])
  np.testing.assert_array_equal(np.isnan(per_slice['precision']), [False, True])


def _slice_case() -> tuple[np.ndarray, np.ndarray]:
  """[4, 2, 2]: both empty; prediction only; label only; TP=1, FP=1, FN=0."""
  pred = np.zeros((4, 2, 2), bool)
  label = np.zeros((4, 2, 2), bool)
  pred[1, 0, :] = True
  label[2, 1, 1] = True
  pred[3, 0, :] = True
  label[3, 0, 0] = True
  return pred, label


def test_per_slice_counts():
  pred, label = _slice_case()
  tp, fp, fn = evaluate.confusion_counts(pred, label, axis=0)
  np.testing.assert_array_equal(tp, [0, 0, 0, 1])
  np.testing.assert_array_equal(fp, [0, 2, 0, 1])
  np.testing.assert_array_equal(fn, [0, 0, 1, 0])
  assert tp.dtype == np.int64


@pytest.mark.parametrize('axis', [0, 2])
def test_per_slice_means_leave_out_empty_slices(axis):
  pred, label = (np.moveaxis(m, 0, axis) for m in _slice_case())
  scores = evaluate.slice_scores(pred, label, axis=axis)
  assert scores['slice_dsc'] == pytest.approx((0 + 0 + 2 / 3) / 3)  # slice 0 left out
  assert scores['slice_sensitivity'] == pytest.approx((0 + 1) / 2)  # undefined on slice 1
  assert scores['slice_precision'] == pytest.approx((0 + 0.5) / 2)  # undefined on slice 2
  assert scores['slices'] == 4
  assert scores['both_empty_slices'] == 1
  assert scores['empty_label_slices'] == 1
  assert scores['empty_prediction_slices'] == 1


@pytest.mark.filterwarnings('error')
def test_per_slice_means_of_an_empty_volume_are_nan_without_warnings():
  empty = np.zeros((3, 2, 2), bool)
  scores = evaluate.slice_scores(empty, empty)
  assert np.isnan(scores['slice_dsc']) and scores['both_empty_slices'] == 3


@pytest.mark.parametrize(('axis', 'expected_mm'), [(0, 3 * 2.5), (2, 3 * 0.8)])
def test_surface_distance_between_two_voxels_follows_the_axis_spacing(axis, expected_mm):
  pred = np.zeros((6, 6, 6), bool)
  label = np.zeros((6, 6, 6), bool)
  pred[1, 1, 1] = True
  label[(4, 1, 1) if axis == 0 else (1, 1, 4)] = True
  to_label, to_pred = evaluate.surface_distances(pred, label, SPACING)
  np.testing.assert_allclose(to_label, [expected_mm])
  np.testing.assert_allclose(to_pred, [expected_mm])
  scores = evaluate.surface_scores(pred, label, SPACING)
  assert scores['hd95_mm'] == pytest.approx(expected_mm)
  assert scores['assd_mm'] == pytest.approx(expected_mm)
  assert scores['surface_status'] == 'ok'


def test_cube_against_a_cube_shifted_along_the_coarse_axis():
  # A 4^3 cube has 56 surface voxels (its 2^3 core is not surface). Shifted by one voxel
  # along axis 0 (2.5 mm): its trailing face (16 voxels) is 2.5 mm from the other cube's
  # surface, the 4 inner voxels of its leading face are 0.8 mm from the other cube's side
  # faces (one voxel along axis 1 or 2), and its 36 other surface voxels lie on it.
  pred = np.zeros((9, 8, 8), bool)
  pred[2:6, 2:6, 2:6] = True
  label = np.roll(pred, 1, axis=0)
  to_label, to_pred = evaluate.surface_distances(pred, label, SPACING)
  for directed in (to_label, to_pred):
    values, counts = np.unique(np.round(directed, 6), return_counts=True)
    np.testing.assert_allclose(values, [0.0, 0.8, 2.5])
    np.testing.assert_array_equal(counts, [36, 4, 16])
  # The same cubes touching the array's border: border voxels count as surface.
  edge = evaluate.surface_distances(pred[2:7, 2:6, 2:6], label[2:7, 2:6, 2:6], SPACING)
  np.testing.assert_allclose(np.sort(edge[0]), np.sort(to_label))
  scores = evaluate.surface_scores(pred, label, SPACING)
  assert scores['hd95_mm'] == pytest.approx(2.5)  # sorted position 0.95 * 55 = 52.25
  assert scores['assd_mm'] == pytest.approx((16 * 2.5 + 4 * 0.8) / 56)


def test_hd95_and_assd_combine_the_two_directions_as_medpy_does():
  # Distances prediction->label [0], label->prediction [0, 5]: HD95 = max(0, 4.75) (a
  # pooled percentile would give 4.5); ASSD = (0 + 2.5) / 2 (pooled: 5 / 3).
  pred = np.zeros((1, 1, 12), bool)
  label = np.zeros((1, 1, 12), bool)
  pred[0, 0, 0] = label[0, 0, 0] = label[0, 0, 10] = True
  scores = evaluate.surface_scores(pred, label, (1.0, 1.0, 0.5))
  assert scores['hd95_mm'] == pytest.approx(4.75)
  assert scores['assd_mm'] == pytest.approx(1.25)


def test_surface_scores_of_empty_masks():
  empty, full = np.zeros((3, 3, 3), bool), np.ones((3, 3, 3), bool)
  both = evaluate.surface_scores(empty, empty, SPACING)
  assert np.isnan(both['hd95_mm']) and np.isnan(both['assd_mm'])
  assert both['surface_status'] == 'both_empty'
  no_pred = evaluate.surface_scores(empty, full, SPACING)
  assert no_pred['hd95_mm'] == np.inf and no_pred['assd_mm'] == np.inf
  assert no_pred['surface_status'] == 'empty_prediction'
  assert evaluate.surface_scores(full, empty, SPACING)['surface_status'] == 'empty_label'
  with pytest.raises(ValueError, match='non-empty'):
    evaluate.surface_distances(empty, full, SPACING)
  with pytest.raises(ValueError, match='one positive size per axis'):
    evaluate.surface_distances(full, full, (1.0, 1.0))


def test_score_case():
  pred, label = _slice_case()
  scores = evaluate.score_case(pred, label, SPACING)
  # 3-D counts: TP=1, FP=3, FN=1.
  assert (scores['tp'], scores['fp'], scores['fn']) == (1, 3, 1)
  assert (scores['prediction_voxels'], scores['label_voxels']) == (4, 2)
  assert scores['dsc'] == pytest.approx(2 / 6)
  assert scores['sensitivity'] == pytest.approx(1 / 2)
  assert scores['precision'] == pytest.approx(1 / 4)
  assert scores['slice_dsc'] == pytest.approx(2 / 9)
  assert scores['both_empty_slices'] == 1
  assert scores['surface_status'] == 'ok' and np.isfinite(scores['hd95_mm'])


def _two_cases() -> dict:
  cube = np.zeros((4, 4, 4), bool)
  cube[1:3, 1:3, 1:3] = True
  return {
    'exact': evaluate.score_case(cube, cube, SPACING),
    'missed': evaluate.score_case(np.zeros_like(cube), cube, SPACING),
  }


def test_summarize_means_finite_values_and_counts_them():
  summary = evaluate.summarize(_two_cases())
  mean, count = summary['mean'], summary['count']
  assert count['cases'] == 2
  assert (mean['dsc'], count['dsc']) == (0.5, 2)
  assert (mean['precision'], count['precision']) == (1.0, 1)  # undefined when missed
  assert (mean['hd95_mm'], count['hd95_mm']) == (0.0, 1)  # inf when missed
  assert 'surface_status' not in mean
  # Pooled over cases: TP=8, FP=0, FN=8.
  assert summary['pooled']['dsc'] == pytest.approx(16 / 24)
  assert summary['pooled']['sensitivity'] == pytest.approx(0.5)


def test_write_summary_writes_strict_json_and_a_markdown_table(tmp_path):
  evaluate.write_summary(evaluate.summarize(_two_cases()), tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['summary.json', 'summary.md']

  def reject(name):
    raise AssertionError(f'{name} is not JSON')

  written = json.loads((tmp_path / 'summary.json').read_text(), parse_constant=reject)
  missed = written['cases']['missed']
  assert missed['hd95_mm'] is None and missed['surface_status'] == 'empty_prediction'
  assert written['mean']['dsc'] == 0.5
  table = (tmp_path / 'summary.md').read_text().splitlines()
  assert table[0].startswith('| case | DSC | sensitivity | precision | per-slice DSC | HD95 mm')
  assert table[2] == '| exact | 1.0000 | 1.0000 | 1.0000 | 1.0000 | 0.00 | 0.00 | 0 | 0 |'
  assert table[3] == '| missed | 0.0000 | 0.0000 | n/a | 0.0000 | inf | inf | 0 | 2 |'
  assert table[4] == '| **mean** | 0.5000 | 0.5000 | 1.0000 | 0.5000 | 0.00 | 0.00 | 0.0 | 1.0 |'
  assert 'hd95_mm: 1' in table[-1]


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
      r'b\.nii: expected integer',
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
