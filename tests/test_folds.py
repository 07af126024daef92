"""k-fold cross-validation: the folds (a partition, stratified by foreground amount), the
dataset's splits_final.json (nnU-Net's format, made once, reused, checked) and each run's
fold of it."""

import json

import pytest

from ecam_jax import configuration, former_keys
from ecam_jax.data import folds, split_report, splits, splits_file
from ecam_jax.errors import ConfigError, DataError

import nifti_fixtures as fx

IDS = [f'case_{i:02d}' for i in range(23)]
# 15 cases with foreground, of very different amounts; 8 without.
VOXELS = {c: (i + 1) ** 2 * 10 for i, c in enumerate(IDS[:15])}
AMOUNTS = {c: splits.Amount(VOXELS.get(c, 0), 3 if c in VOXELS else 0) for c in IDS}


def test_folds_partition_the_cases_and_share_the_foreground():
  vals = folds.make_folds(IDS, VOXELS, 5, seed=0)
  assert sorted(c for val in vals for c in val) == IDS  # each case validated exactly once
  assert sorted(len(v) for v in vals) == [4, 4, 5, 5, 5]
  # dealt in rounds of 5, largest first: 3 cases with foreground in every fold
  assert [sum(c in VOXELS for c in v) for v in vals] == [3] * 5
  held = [sum(VOXELS.get(c, 0) for c in v) for v in vals]
  assert max(held) < 2 * min(held)
  assert folds.make_folds(list(reversed(IDS)), VOXELS, 5, seed=0) == vals
  assert folds.make_folds(IDS, VOXELS, 5, seed=1) != vals
  with pytest.raises(DataError, match=r'folds=9: 4 cases .* cannot make 9 folds'):
    folds.make_folds(IDS[:4], VOXELS, 9, seed=0)


def _fold_config(fold, **data):
  return fx.config(fold=fold, **{'split_sizes': (18, 2, 3), **data}).data


def test_every_fold_run_reads_the_same_splits_final_json(tmp_path):
  """Five runs with one cache folder: the first makes splits_final.json, the rest reuse
  it; their val splits partition the non-test cases; the test split is held out of all."""
  cache_dir = tmp_path / 'shared_cache'
  runs = [
    splits.make_splits(
      IDS, _fold_config(str(f), cache_dir=str(cache_dir)), tmp_path / f'f{f}', AMOUNTS
    )
    for f in range(5)
  ]
  path = cache_dir / 'splits_final.json'
  stored = json.loads(path.read_text())
  # nnU-Net's format: a list of {"train", "val"} (its reader ignores our "test")
  assert isinstance(stored, list) and len(stored) == 5
  test = runs[0]['test']
  assert len(test) == 3 and any(c in VOXELS for c in test)
  rest = sorted(set(IDS) - set(test))
  for f, (run, fold) in enumerate(zip(runs, stored, strict=True)):
    assert set(fold) == {'train', 'val', 'test'} and fold['test'] == test
    assert sorted(fold['train'] + fold['val']) == rest
    assert run == {'train': fold['train'], 'val': fold['val'], 'test': test}
    assert json.loads((tmp_path / f'f{f}' / 'splits.json').read_text()) == run
  assert sorted(c for run in runs for c in run['val']) == rest
  # A rerun reuses the file (even with another seed, which would draw other folds) ...
  before = path.stat().st_mtime_ns
  again = splits.make_splits(
    IDS, _fold_config('3', cache_dir=str(cache_dir), split_seed=7), tmp_path / 'g', AMOUNTS
  )
  assert again == runs[3] and path.stat().st_mtime_ns == before
  # ... and a user gives it to nnU-Net, or back to us as a splits file.
  data = fx.config(splits_file=str(path), fold='3').data
  assert splits.make_splits(IDS, data, tmp_path / 'user') == runs[3]
  # fold all trains and validates on every non-test case
  every = splits.make_splits(
    IDS, _fold_config('all', cache_dir=str(cache_dir)), tmp_path / 'all', AMOUNTS
  )
  assert every == {'train': rest, 'val': rest, 'test': test}
  assert splits_file.read_splits_file(tmp_path / 'all' / 'splits.json', IDS, run_file=True) == every
  lines = split_report.warnings(every, AMOUNTS, _fold_config('all'), 10**9)
  assert lines[0].startswith('note: fold all validates on its training cases')


def test_a_folds_file_for_other_cases_or_another_fold_count_is_refused(tmp_path):
  data = _fold_config('0')
  splits.make_splits(IDS, data, tmp_path, AMOUNTS)
  path = tmp_path / 'cache' / 'splits_final.json'
  with pytest.raises(DataError, match=rf'{path} holds 5 folds, not config.data.folds=3'):
    splits.check(IDS, _fold_config('0', folds=3), tmp_path)
  with pytest.raises(DataError, match=rf"{path} holds other cases .*1 are new, e.g. 'new'"):
    splits.check([*IDS, 'new'], _fold_config('0', split_sizes=(19, 2, 3)), tmp_path)
  # the run's splits.json is another fold's: refused like any changed split
  (tmp_path / 'splits.json').write_text(json.dumps(json.loads(path.read_text())[1]))
  with pytest.raises(DataError, match=r'splits\.json holds other splits .*fold 0 of'):
    splits.make_splits(IDS, data, tmp_path, AMOUNTS)


def test_a_fold_whose_val_holds_most_foreground_is_warned_about(tmp_path):
  """Two cases with foreground, one large: the fold that validates the large one leaves
  its training the small one, and says so."""
  amounts = {c: splits.Amount(0, 0) for c in IDS[:10]}
  amounts |= {'case_00': splits.Amount(5000, 20), 'case_01': splits.Amount(40, 2)}
  data = fx.config(fold='0', folds=2, split_ratios=(0.8, 0.2, 0.0)).data
  for fold in ('0', '1'):
    data.fold = fold
    run = splits.make_splits(IDS[:10], data, tmp_path / fold, amounts)
    lines = split_report.warnings(run, amounts, data, 10**6)
    if 'case_00' in run['val']:
      assert lines[0].startswith('warning: training holds 1% of the foreground voxels')
      assert f'In fold {fold}, val holds the cases with most of the foreground' in lines[0]
    else:
      assert lines[0].startswith('warning: val holds 2 foreground slices')


def test_fold_values_are_checked_and_old_integer_folds_read():
  config = fx.config()
  for bad, message in (('x', "expected '' .* a fold number"), ('5', r"fold='5' with .*folds=5")):
    config.data.fold = bad
    with pytest.raises(ConfigError, match=message):
      configuration.check(config)
  # a stored config from before: the integer was only read with a splits file
  assert former_keys.upgrade({'data.fold': 0, 'data.splits_file': ''})['data.fold'] == ''
  assert former_keys.upgrade({'data.fold': 2, 'data.splits_file': 'f.json'})['data.fold'] == '2'
