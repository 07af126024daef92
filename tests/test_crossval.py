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

from ecam_jax import evaluate, infer
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
