"""Counts to scores: the one convention (NaN for an empty denominator), per-slice means,
surface distances and summaries, checked against values worked out by hand."""

import json

import numpy as np
import pytest

from ecam_jax import scoring

SPACING = (2.5, 0.8, 0.8)  # anisotropic: a wrong axis order gives a wrong distance


# (TP, FP, FN) -> (DSC, sensitivity, precision), by hand; None = NaN (denominator 0).
CONVENTION = [
  pytest.param((1, 2, 1), (2 / 5, 1 / 2, 1 / 3), id='all-defined'),
  pytest.param((0, 0, 0), (None, None, None), id='all-zero-counts'),
  pytest.param((0, 3, 0), (0.0, None, 0.0), id='empty-label-only'),
  pytest.param((0, 0, 4), (0.0, 0.0, None), id='empty-prediction-only'),
  pytest.param((5, 0, 0), (1.0, 1.0, 1.0), id='perfect'),
]


@pytest.mark.parametrize(('counts', 'expected'), CONVENTION)
def test_ratios_follow_one_convention(counts, expected):
  got = scoring.ratios(*counts)
  for key, want in zip(('dsc', 'sensitivity', 'precision'), expected, strict=True):
    if want is None:
      assert np.isnan(got[key]), (key, got)
    else:
      assert got[key] == pytest.approx(want), (key, got)
    assert isinstance(got[key], float)


def test_ratios_are_elementwise_on_arrays():
  tp, fp, fn = (np.array(c) for c in zip(*(p.values[0] for p in CONVENTION), strict=True))
  got = scoring.ratios(tp, fp, fn)
  for i, param in enumerate(CONVENTION):
    for key, want in zip(('dsc', 'sensitivity', 'precision'), param.values[1], strict=True):
      value = got[key][i]
      assert np.isnan(value) if want is None else value == pytest.approx(want)


def test_slice_scores_from_counts_by_hand():
  # Slices: both empty (left out); label only (DSC 0, sensitivity 0, precision undefined);
  # prediction only (DSC 0, precision 0, sensitivity undefined); TP=3, FP=1, FN=2
  # (DSC 6/9, sensitivity 3/5, precision 3/4).
  tp, fp, fn = [0, 0, 0, 3], [0, 0, 2, 1], [0, 5, 0, 2]
  got = scoring.slice_scores_from_counts(tp, fp, fn)
  assert got['slice_dsc'] == pytest.approx((0 + 0 + 6 / 9) / 3)
  assert got['slice_sensitivity'] == pytest.approx((0 + 3 / 5) / 2)
  assert got['slice_precision'] == pytest.approx((0 + 3 / 4) / 2)
  assert (got['slices'], got['both_empty_slices']) == (4, 1)
  assert (got['empty_label_slices'], got['empty_prediction_slices']) == (1, 1)


def test_counts_on_a_tiny_array():
  pred = np.array([1, 1, 1, 0, 0], bool)
  label = np.array([1, 0, 0, 1, 0], bool)
  assert scoring.confusion_counts(pred, label) == (1, 2, 1)


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
  tp, fp, fn = scoring.confusion_counts(pred, label, axis=0)
  np.testing.assert_array_equal(tp, [0, 0, 0, 1])
  np.testing.assert_array_equal(fp, [0, 2, 0, 1])
  np.testing.assert_array_equal(fn, [0, 0, 1, 0])
  assert tp.dtype == np.int64


@pytest.mark.parametrize('axis', [0, 2])
def test_per_slice_means_leave_out_empty_slices(axis):
  pred, label = (np.moveaxis(m, 0, axis) for m in _slice_case())
  scores = scoring.slice_scores(pred, label, axis=axis)
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
  scores = scoring.slice_scores(empty, empty)
  assert np.isnan(scores['slice_dsc']) and scores['both_empty_slices'] == 3


@pytest.mark.parametrize(('axis', 'expected_mm'), [(0, 3 * 2.5), (2, 3 * 0.8)])
def test_surface_distance_between_two_voxels_follows_the_axis_spacing(axis, expected_mm):
  pred = np.zeros((6, 6, 6), bool)
  label = np.zeros((6, 6, 6), bool)
  pred[1, 1, 1] = True
  label[(4, 1, 1) if axis == 0 else (1, 1, 4)] = True
  to_label, to_pred = scoring.surface_distances(pred, label, SPACING)
  np.testing.assert_allclose(to_label, [expected_mm])
  np.testing.assert_allclose(to_pred, [expected_mm])
  scores = scoring.surface_scores(pred, label, SPACING)
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
  to_label, to_pred = scoring.surface_distances(pred, label, SPACING)
  for directed in (to_label, to_pred):
    values, counts = np.unique(np.round(directed, 6), return_counts=True)
    np.testing.assert_allclose(values, [0.0, 0.8, 2.5])
    np.testing.assert_array_equal(counts, [36, 4, 16])
  # The same cubes touching the array's border: border voxels count as surface.
  edge = scoring.surface_distances(pred[2:7, 2:6, 2:6], label[2:7, 2:6, 2:6], SPACING)
  np.testing.assert_allclose(np.sort(edge[0]), np.sort(to_label))
  scores = scoring.surface_scores(pred, label, SPACING)
  assert scores['hd95_mm'] == pytest.approx(2.5)  # sorted position 0.95 * 55 = 52.25
  assert scores['assd_mm'] == pytest.approx((16 * 2.5 + 4 * 0.8) / 56)


def test_hd95_and_assd_combine_the_two_directions_as_medpy_does():
  # Distances prediction->label [0], label->prediction [0, 5]: HD95 = max(0, 4.75) (a
  # pooled percentile would give 4.5); ASSD = (0 + 2.5) / 2 (pooled: 5 / 3).
  pred = np.zeros((1, 1, 12), bool)
  label = np.zeros((1, 1, 12), bool)
  pred[0, 0, 0] = label[0, 0, 0] = label[0, 0, 10] = True
  scores = scoring.surface_scores(pred, label, (1.0, 1.0, 0.5))
  assert scores['hd95_mm'] == pytest.approx(4.75)
  assert scores['assd_mm'] == pytest.approx(1.25)


def test_surface_scores_of_empty_masks():
  empty, full = np.zeros((3, 3, 3), bool), np.ones((3, 3, 3), bool)
  both = scoring.surface_scores(empty, empty, SPACING)
  assert np.isnan(both['hd95_mm']) and np.isnan(both['assd_mm'])
  assert both['surface_status'] == 'both_empty'
  no_pred = scoring.surface_scores(empty, full, SPACING)
  assert no_pred['hd95_mm'] == np.inf and no_pred['assd_mm'] == np.inf
  assert no_pred['surface_status'] == 'empty_prediction'
  assert scoring.surface_scores(full, empty, SPACING)['surface_status'] == 'empty_label'
  with pytest.raises(ValueError, match='non-empty'):
    scoring.surface_distances(empty, full, SPACING)
  with pytest.raises(ValueError, match='one positive size per axis'):
    scoring.surface_distances(full, full, (1.0, 1.0))


def test_score_case():
  pred, label = _slice_case()
  scores = scoring.score_case(pred, label, SPACING)
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
    'exact': scoring.score_case(cube, cube, SPACING),
    'missed': scoring.score_case(np.zeros_like(cube), cube, SPACING),
  }


def test_summarize_means_finite_values_and_counts_them():
  summary = scoring.summarize(_two_cases())
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
  scoring.write_summary(scoring.summarize(_two_cases()), tmp_path)
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


def test_multiclass_summary_by_hand():
  # Two cases, classes A and B and a region: hand-picked scores of score_case's keys.
  def case(dsc, hd95):
    scores = {key: 0.5 for key, _, _ in scoring.TABLE_COLUMNS}
    scores.update(dsc=dsc, hd95_mm=hd95, tp=1, fp=0, fn=0, surface_status='ok')
    return scores

  per_item = {
    'A': {'c1': case(0.8, 2.0), 'c2': case(0.6, 4.0)},
    'B': {'c1': case(0.2, np.inf), 'c2': case(np.nan, np.nan)},  # c2: B absent from both
    'AB': {'c1': case(0.9, 1.0), 'c2': case(0.7, 3.0)},
  }
  summary = scoring.summarize_classes(per_item, ['A', 'B'])
  assert summary['classes']['B']['mean']['dsc'] == pytest.approx(0.2)  # c2 left out
  assert summary['classes']['B']['count']['dsc'] == 1
  assert summary['mean']['dsc'] == pytest.approx((0.7 + 0.2) / 2)  # the region is not in it
  assert summary['mean']['hd95_mm'] == pytest.approx(3.0)  # B's HD95 is inf in its one case
  assert summary['count']['hd95_mm'] == 1
  assert summary['cases']['c1']['dsc'] == pytest.approx(0.5)
  assert summary['cases']['c2']['dsc'] == pytest.approx(0.6)
  text = scoring.markdown_table(summary)
  assert '| AB (region) |' in text and '**mean of A, B**' in text and '## B' in text
