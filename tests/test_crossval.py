"""After a cross-validation: the out-of-fold evaluation pools the folds' own validation
cases, and an ensemble of folds averages its members' probabilities.

The folds' checkpoints are the tiny run's (tests/fixtures/checkpoint_da1b17d): what is
checked here is how folds are read, predicted and pooled, not how they train."""

import json
import math
import pathlib
import shutil

import numpy as np
import pytest

from ecam_jax import evaluate, infer, postprocess
from ecam_jax.data import phantom, splits
from ecam_jax.errors import DataError

import tiny_runs

RUN = pathlib.Path(__file__).parent / 'fixtures' / 'checkpoint_da1b17d'
CASES = ['phantom_000', 'phantom_001', 'phantom_002']


@pytest.fixture(scope='module')
def folds(tmp_path_factory):
  """(config, WORKDIR): a 3-case phantom in 2 folds (1 test case held out), each fold a run
  folder WORKDIR/fold_K with the fixture's checkpoints and its fold's splits.json."""
  root = tmp_path_factory.mktemp('cv')
  phantom.generate(root / 'data', 3, seed=0, size=64)
  config = tiny_runs.config(root / 'data')
  config.data.folds = 2
  config.data.cache_dir = str(root / 'cache')
  for fold in range(2):
    run = root / 'cv' / f'fold_{fold}'
    shutil.copytree(RUN / 'workdir' / 'checkpoints', run / 'checkpoints')
    config.data.fold = str(fold)
    splits.make_splits(CASES, config.data, run, CASES)
  config.data.fold = ''
  return config, root / 'cv'


def test_out_of_fold_evaluation_pools_the_folds_evaluations(folds):
  config, workdir = folds
  per_fold = [
    evaluate.evaluate_split(config, workdir / f'fold_{k}', 'best', split='val') for k in (0, 1)
  ]
  pooled = evaluate.evaluate_folds(config, workdir, 'best')
  vals = [f['cases'] for f in pooled['folds']]
  test = json.loads((workdir / 'fold_0' / 'splits.json').read_text())['test']
  assert sorted(vals[0] + vals[1]) == sorted(set(CASES) - set(test))  # each once
  cases = {}
  for summary in per_fold:
    cases |= summary['cases']
  assert pooled['cases'].keys() == cases.keys()
  for case, scores in cases.items():
    for key, value in scores.items():
      got = pooled['cases'][case][key]
      assert got == value or (math.isnan(got) and math.isnan(value)), (case, key)
  # the pooled DSC from the counts summed by hand
  tp, fp, fn = (sum(int(s[k]) for s in cases.values()) for k in ('tp', 'fp', 'fn'))
  assert pooled['pooled']['dsc'] == pytest.approx(2 * tp / (2 * tp + fp + fn))
  out = workdir / 'crossval'
  assert json.loads((out / 'summary.json').read_text())['count']['cases'] == 2
  decision = json.loads((out / 'postprocessing.json').read_text())
  assert decision == pooled['postprocessing'] and len(decision['keep_components']) == 1
  assert (out / 'summary.md').is_file()
  assert sorted(p.name for p in (out / 'predictions').iterdir()) == sorted(
    f'{c}.nii.gz' for c in cases
  )


def test_out_of_fold_evaluation_refuses_missing_or_overlapping_folds(folds, tmp_path):
  config, workdir = folds
  broken = tmp_path / 'cv'
  shutil.copytree(workdir / 'fold_0', broken / 'fold_0', ignore=shutil.ignore_patterns('eval'))
  with pytest.raises(DataError, match=r'no trained fold in .*fold_1: --mode=crossval'):
    evaluate.evaluate_folds(config, broken, 'best')
  shutil.copytree(broken / 'fold_0', broken / 'fold_1')  # the same val split twice
  with pytest.raises(DataError, match=r'validated by fold_0 and fold_1'):
    evaluate.evaluate_folds(config, broken, 'best')


def test_an_ensemble_averages_its_members_probabilities(folds):
  """Two identical checkpoints give one's probabilities; two different ones (the tiny
  run's best and latest) the mean of theirs, with flip TTA inside each member; folds'
  run folders restore as members."""
  config, workdir = folds
  best, _ = tiny_runs.variables(RUN / 'workdir', 'best')
  latest, _ = tiny_runs.variables(RUN / 'workdir', 'latest')
  x = np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)
  for tta in (False, True):
    config.eval.tta_flip = tta
    one, other = (
      infer.Predictor(config, None, variables=v).probabilities(x) for v in (best, latest)
    )
    twice = infer.Predictor(config, None, variables=[best, best]).probabilities(x)
    np.testing.assert_array_equal(twice, one)
    both = infer.Predictor(config, None, variables=[best, latest]).probabilities(x)
    np.testing.assert_allclose(both, (one + other) / 2, rtol=1e-6, atol=1e-7)
    assert not np.allclose(one, other, atol=1e-4)
  config.eval.tta_flip = False
  runs = [workdir / 'fold_0', workdir / 'fold_1']
  ensemble = infer.Predictor(config, runs, 'best')
  assert [m['workdir'] for m in ensemble.meta['ensemble']] == [str(r) for r in runs]
  assert ensemble.meta['ensemble'][0]['step'] == 8
  np.testing.assert_array_equal(
    ensemble.probabilities(x), infer.Predictor(config, None, variables=best).probabilities(x)
  )


def _blob(shape, corner, size) -> np.ndarray:
  mask = np.zeros(shape, bool)
  mask[tuple(slice(c, c + size) for c in corner)] = True
  return mask


def test_the_postprocessing_keeps_the_largest_component_where_it_helps():
  """Class a: each case's prediction adds a small false island to the labelled blob, so
  keeping the largest component helps. Class b: two organs of a similar size (two kidneys),
  both predicted, so keeping the largest one hurts. A class in no case keeps all."""
  shape = (20, 20, 20)
  chooser = postprocess.Chooser(['a', 'b', 'absent'], [1, 2, 3])
  for shift in range(3):
    label = np.zeros(shape, np.uint8)
    label[_blob(shape, (1 + shift, 1, 1), 6)] = 1
    label[_blob(shape, (12, 12, 1), 5) | _blob(shape, (12, 1, 12), 5)] = 2
    pred = label.copy()
    pred[_blob(shape, (17, 17, 17), 2)] = 1  # the island
    pred[_blob(shape, (12, 12, 1), 1)] = 0  # one voxel of b missed
    chooser.add(pred, label)
  decision = chooser.decide()
  assert decision['keep_components'] == [1, 0, 0]
  a, b = decision['classes']['a'], decision['classes']['b']
  island = 2 * 216 / (2 * 216 + 8)  # DSC of a as predicted: 8 false voxels
  assert a['dsc_as_predicted'] == pytest.approx(island) and a['dsc_largest_component'] == 1.0
  assert b['dsc_largest_component'] < b['dsc_as_predicted']
  assert decision['classes']['absent']['dsc_as_predicted'] is None


def _two_classes(pred_island: bool, apart: bool):
  """Label: class a a large blob; class b two small real parts that touch a (a lesion in an
  organ), or with `apart` class b one organ far from a (two organs). Prediction: the label,
  with a false island of b far from everything when `pred_island`."""
  shape = (20, 20, 20)
  label = np.zeros(shape, np.uint8)
  label[_blob(shape, (1, 1, 1), 8)] = 1
  if apart:
    label[_blob(shape, (14, 14, 14), 5)] = 2
  else:
    label[_blob(shape, (9, 1, 1), 3) | _blob(shape, (1, 9, 1), 2)] = 2  # touch a, not each other
  pred = label.copy()
  if pred_island:
    pred[_blob(shape, (17, 1, 17), 2)] = 2
  return pred, label


def test_the_merged_foreground_step_where_it_helps_and_where_it_hurts():
  """nnU-Net's first step: keep the largest component of all foreground classes merged.
  Helps: b's false island is removed while b's two real parts, which touch a, stay (keeping
  b's own largest component would delete a real part: b keeps all). Hurts: two organs apart
  are two merged components; keeping the larger deletes b, so the step is not taken."""
  chooser = postprocess.Chooser(['a', 'b'], [1, 2])
  for _ in range(2):
    chooser.add(*_two_classes(pred_island=True, apart=False))
  decision = chooser.decide()
  assert decision['keep_foreground_component'] == 1 and decision['keep_components'] == [0, 0]
  assert decision['classes']['b']['dsc_as_predicted'] == 1.0  # after the merged step
  assert decision['foreground']['dsc_as_predicted'] == pytest.approx((1 + 2 * 35 / 78) / 2)
  pred, label = _two_classes(pred_island=True, apart=False)
  np.testing.assert_array_equal(postprocess.keep_foreground(pred), label)
  chooser = postprocess.Chooser(['a', 'b'], [1, 2])
  for _ in range(2):
    chooser.add(*_two_classes(pred_island=False, apart=True))
  decision = chooser.decide()
  assert decision['keep_foreground_component'] == 0
  assert decision['foreground']['dsc_largest_component'] == pytest.approx(0.5)  # b lost


def test_prediction_with_the_folds_applies_the_choice_unless_the_config_sets_one(folds):
  config, workdir = folds
  runs = [workdir / 'fold_0', workdir / 'fold_1']
  decision = workdir / 'crossval' / 'postprocessing.json'
  decision.parent.mkdir(exist_ok=True)
  decision.write_text(json.dumps({'keep_components': [0]}))
  assert infer.Predictor(config, runs, 'best').decision.keep_components == (0,)
  decision.write_text(json.dumps({'keep_components': [1], 'keep_foreground_component': 1}))
  chosen = infer.Predictor(config, runs, 'best')
  assert chosen.decision.keep_components == (1,) and chosen.postprocessing == decision
  assert chosen.decision.keep_foreground_component == 1
  decision.write_text(json.dumps({'keep_components': [1]}))  # written before the merged step
  assert infer.Predictor(config, runs[0], 'best').decision.keep_components == (0,)  # one fold
  ensemble = evaluate.evaluate_split(config, workdir, 'best', members=runs)  # --folds=0,1
  assert ensemble['count']['cases'] == 1 and len(ensemble['checkpoint']['ensemble']) == 2
  assert ensemble['postprocessing'] == {
    'keep_components': [1],
    'keep_foreground_component': 0,
    'chosen_by': str(decision),
  }
  config.eval.keep_components = 0
  assert infer.Predictor(config, runs, 'best').decision.keep_components == (0,)
  config.eval.keep_components = None
