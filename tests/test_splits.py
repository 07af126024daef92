"""Case splits: deterministic, disjoint, the paper's sizes, ratios, and a user's file."""

import json

import numpy as np
import pytest

from ecam_jax.data import split_report, splits
from ecam_jax.errors import ConfigError, DataError

import nifti_fixtures as fx

IDS = [f'c{i:03d}' for i in range(40)]


def _check_partition(result, ids):
  together = result['train'] + result['val'] + result['test']
  assert sorted(together) == sorted(ids) and len(set(together)) == len(ids)
  for name in splits.SPLITS:
    assert result[name] == sorted(result[name])


def test_deterministic_whatever_the_listing_order(tmp_path):
  data = fx.config().data
  a = splits.make_splits(IDS, data, tmp_path / 'a')
  b = splits.make_splits(list(reversed(IDS)), data, tmp_path / 'b')
  assert a == b
  _check_partition(a, IDS)
  assert [len(a[s]) for s in splits.SPLITS] == [32, 2, 6]  # ratios 0.8, 0.05, 0.15
  data.split_seed = 1
  c = splits.make_splits(IDS, data, tmp_path / 'c')
  assert c != a
  _check_partition(c, IDS)
  assert json.loads((tmp_path / 'a' / 'splits.json').read_text()) == a


@pytest.mark.parametrize(
  'dataset,total,sizes',
  [
    ('msd_pancreas', 281, [236, 5, 40]),
    ('tcia_pancreas', 82, [57, 5, 20]),
    ('kits19', 210, [170, 10, 30]),
  ],
)
def test_paper_sizes(tmp_path, dataset, total, sizes):
  ids = [f'x{i}' for i in range(total)]
  result = splits.make_splits(ids, fx.config(dataset=dataset).data, tmp_path)
  assert [len(result[s]) for s in splits.SPLITS] == sizes
  _check_partition(result, ids)


def test_heart_by_ratio_and_sizes_override(tmp_path):
  data = fx.config(dataset='msd_heart').data
  assert splits.split_sizes(20, data) == (16, 1, 3)
  data.split_sizes = (10, 5, 5)
  assert splits.split_sizes(20, data) == (10, 5, 5)


def test_sizes_that_do_not_add_up_suggest_ratios_or_a_file(tmp_path):
  with pytest.raises(
    ConfigError, match=r'\(236, 5, 40\) \(sum 281\) but 12 cases.*split_ratios.*splits_file'
  ):
    splits.make_splits(IDS[:12], fx.config(dataset='msd_pancreas').data, tmp_path)


def test_empty_split_is_an_error(tmp_path):
  with pytest.raises(ConfigError, match='empty val split'):
    splits.make_splits(IDS[:5], fx.config(split_ratios=(0.9, 0.0, 0.1)).data, tmp_path)
  with pytest.raises(ConfigError, match='empty train split'):
    splits.make_splits(IDS[:2], fx.config().data, tmp_path)
  with pytest.raises(ConfigError, match='split_ratios'):
    splits.make_splits(IDS, fx.config(split_ratios=(0.5, 0.2, 0.2)).data, tmp_path)


def test_users_splits_file_overrides_and_is_checked(tmp_path):
  user = tmp_path / 'mine.json'
  user.write_text(json.dumps({'train': ['c002', 'c001'], 'val': ['c000'], 'test': []}))
  data = fx.config(splits_file=str(user)).data
  result = splits.make_splits(IDS[:4], data, tmp_path / 'w')
  assert result == {'train': ['c001', 'c002'], 'val': ['c000'], 'test': []}
  bad = {
    'unknown': ({'train': ['zzz'], 'val': ['c000']}, r"train case 'zzz' is not among"),
    'twice': ({'train': ['c001'], 'val': ['c001']}, r"case 'c001' is in both train and val"),
    'empty': ({'train': ['c001'], 'val': []}, 'the val split is empty'),
    'shape': ({'training': []}, 'expected a JSON object'),
  }
  for name, (content, message) in bad.items():
    path = tmp_path / f'{name}.json'
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=rf'{path}: {message}'):
      splits.make_splits(IDS[:4], fx.config(splits_file=str(path)).data, tmp_path / name)
  with pytest.raises(DataError, match='does not exist'):
    splits.make_splits(IDS, fx.config(splits_file=str(tmp_path / 'none.json')).data, tmp_path)


def test_changed_splits_in_an_old_workdir_are_refused(tmp_path):
  splits.make_splits(IDS, fx.config().data, tmp_path)
  assert splits.make_splits(IDS, fx.config().data, tmp_path)  # same: fine
  with pytest.raises(DataError, match=r'splits\.json holds other splits'):
    splits.make_splits(IDS, fx.config(split_seed=5).data, tmp_path)


# --- stratification by foreground ---------------------------------------------------------

EIGHT = [f'case_{i}' for i in range(8)]


@pytest.mark.parametrize('seed', range(6))
def test_val_and_test_get_a_foreground_case(tmp_path, seed):
  """8 cases, 3 with foreground, sizes (6, 1, 1): the MR run of issue 11 put a case without
  foreground alone in val; every seed now gives val and test one with foreground."""
  foreground = {'case_1', 'case_4', 'case_6'}
  data = fx.config(split_sizes=(6, 1, 1), split_seed=seed).data
  result = splits.make_splits(EIGHT, data, tmp_path, foreground)
  _check_partition(result, EIGHT)
  assert [len(result[s]) for s in splits.SPLITS] == [6, 1, 1]
  assert [len(set(result[s]) & foreground) for s in splits.SPLITS] == [1, 1, 1]
  assert split_report.describe(result, foreground) == (
    'train 6 cases (1 with foreground: 33% of its voxels, 1 slices), val 1 (1: 33%, 1 slices), '
    'test 1 (1: 33%, 1 slices)'
  )


def test_stratified_splits_are_deterministic_and_vary_with_the_seed(tmp_path):
  foreground = set(IDS[::4])  # 10 of 40
  data = fx.config().data
  a = splits.make_splits(IDS, data, tmp_path / 'a', foreground)
  b = splits.make_splits(list(reversed(IDS)), data, tmp_path / 'b', sorted(foreground))
  assert a == b
  _check_partition(a, IDS)
  # sizes (32, 2, 6): one foreground case to each split first; the shares of the 10 are
  # (8, 0.5, 1.5), so the other 7 all go to train (its shortfall stays above test's 0.5).
  assert [len(set(a[s]) & foreground) for s in splits.SPLITS] == [8, 1, 1]
  seeds = {
    json.dumps(splits.make_splits(IDS, fx.config(split_seed=k).data, tmp_path / str(k), foreground))
    for k in range(5)
  }
  assert len(seeds) > 1


def test_foreground_follows_the_split_sizes(tmp_path):
  ids = [f'x{i:03d}' for i in range(281)]
  foreground = set(ids[:200])
  result = splits.make_splits(ids, fx.config(dataset='msd_pancreas').data, tmp_path, foreground)
  counts = [len(set(result[s]) & foreground) for s in splits.SPLITS]
  assert counts == [168, 4, 28]  # 200 * (236, 5, 40) / 281 = (167.97, 3.56, 28.47)
  assert sum(counts) == 200


def test_few_foreground_cases_go_to_train_then_val(tmp_path):
  data = fx.config(split_sizes=(6, 1, 1)).data
  one = splits.make_splits(EIGHT, data, tmp_path / '1', {'case_3'})
  assert 'case_3' in one['train']
  two = splits.make_splits(EIGHT, data, tmp_path / '2', {'case_3', 'case_5'})
  assert [len(set(two[s]) & {'case_3', 'case_5'}) for s in splits.SPLITS] == [1, 1, 0]
  assert split_report.describe(two, set()) == (
    'train 6 cases (0 with foreground: 0% of its voxels, 0 slices), val 1 (0: 0%, 0 slices), '
    'test 1 (0: 0%, 0 slices)'
  )


def test_splits_json_from_before_stratification_is_kept(tmp_path):
  """A workdir split before foreground was known (one shuffle of all cases) resumes with
  the same splits; a seed change is still refused."""
  data = fx.config(split_sizes=(6, 1, 1)).data
  old = splits.make_splits(EIGHT, data, tmp_path)  # no foreground information
  order = np.random.default_rng(0).permutation(8)  # how splits were made before
  assert old['val'] == [EIGHT[order[6]]] and old['test'] == [EIGHT[order[7]]]
  foreground = set(EIGHT) - set(old['val']) - set(old['test'])  # no foreground in val/test
  again = splits.make_splits(EIGHT, data, tmp_path, foreground)
  assert again == old
  with pytest.raises(DataError, match=r'splits\.json holds other splits'):
    splits.make_splits(
      EIGHT,
      fx.config(split_sizes=(6, 1, 1), split_seed=3).data,
      tmp_path,
      foreground,
    )


def test_check_fails_before_any_cache_with_what_make_splits_would_say(tmp_path):
  """The demo's sizes (8, 2, 2) against a 4-case folder fail from the case list alone."""
  data = fx.config(split_sizes=(8, 2, 2)).data
  with pytest.raises(ConfigError, match=r'\(8, 2, 2\) \(sum 12\) but 4 cases were found'):
    splits.check(EIGHT[:4], data, tmp_path)
  splits.check(EIGHT[:4], fx.config(split_sizes=(2, 1, 1)).data, tmp_path)
  user = tmp_path / 'mine.json'
  user.write_text(json.dumps({'train': ['zzz'], 'val': ['case_0']}))
  with pytest.raises(DataError, match=r"train case 'zzz' is not among the 4 cases"):
    splits.check(EIGHT[:4], fx.config(splits_file=str(user)).data, tmp_path)


def test_check_refuses_an_old_splits_json_for_other_cases_or_sizes(tmp_path):
  splits.make_splits(EIGHT, fx.config(split_sizes=(6, 1, 1)).data, tmp_path)
  splits.check(EIGHT, fx.config(split_sizes=(6, 1, 1)).data, tmp_path)
  with pytest.raises(DataError, match=r'splits\.json holds other splits .*sizes differ'):
    splits.check(EIGHT, fx.config(split_sizes=(5, 2, 1)).data, tmp_path)
  with pytest.raises(DataError, match=r"splits\.json holds other splits .*'case_8'"):
    splits.check([*EIGHT, 'case_8'], fx.config(split_sizes=(7, 1, 1)).data, tmp_path)


def test_nnunets_splits_final_json_is_read_at_the_configs_fold(tmp_path):
  """A list of {"train", "val"} folds (nnU-Net's splits_final.json): data.fold picks one
  (or all of fold 0's cases); its test split is empty; a fold that is not there, or none
  chosen, is named."""
  folds = [{'train': IDS[:8], 'val': IDS[8:]}, {'train': IDS[4:], 'val': IDS[:4]}]
  path = tmp_path / 'splits_final.json'
  path.write_text(json.dumps(folds))
  data = fx.config(splits_file=str(path), fold='1').data
  got = splits.make_splits(IDS, data, tmp_path / 'w')
  assert got == {'train': sorted(IDS[4:]), 'val': sorted(IDS[:4]), 'test': []}
  data.fold = 'all'
  assert splits.make_splits(IDS, data, tmp_path / 'all') == {'train': IDS, 'val': IDS, 'test': []}
  data.fold = '2'
  with pytest.raises(DataError, match=r"holds 2 folds; config.data.fold='2' is not one of them"):
    splits.check(IDS, data, tmp_path / 'w2')
  data.fold = ''
  with pytest.raises(DataError, match=r'holds 2 folds; set config.data.fold to one of 0 .. 1'):
    splits.check(IDS, data, tmp_path / 'w2')
  path.write_text(json.dumps([{'train': IDS[:8]}]))
  data.fold = '0'
  with pytest.raises(DataError, match=r'fold 0 is .*expected a JSON object'):
    splits.check(IDS, data, tmp_path / 'w3')
  path.write_text(json.dumps({'train': IDS[:8], 'val': IDS[8:]}))
  with pytest.raises(DataError, match=r"holds one split, not folds; config.data.fold='0'"):
    splits.check(IDS, data, tmp_path / 'w4')


# --- training served first, and what a run is told ----------------------------------------

# The small MR dataset of issue 26: 8 cases, one with 20 foreground slices, one with 2.
LARGE, TINY = 'case_2', 'case_5'
AMOUNTS = {c: splits.Amount(0, 0) for c in EIGHT} | {
  LARGE: splits.Amount(4000, 20),
  TINY: splits.Amount(60, 2),
}
VOXELS = 8 * 30 * 64 * 64  # 8 cases of 30 slices of 64 x 64


@pytest.mark.parametrize('seed', range(8))
def test_training_gets_the_large_foreground_case_whatever_the_seed(tmp_path, seed):
  """The default split of the issue's dataset (6/1/1 by the default ratios) gives training
  the large case: before, seeds that drew it for val left training 2 slices in 120."""
  data = fx.config(split_seed=seed).data
  result = splits.make_splits(EIGHT, data, tmp_path, AMOUNTS)
  assert [len(result[s]) for s in splits.SPLITS] == [6, 1, 1]
  assert LARGE in result['train'] and result['val'] == [TINY]
  assert split_report.describe(result, AMOUNTS).startswith(
    'train 6 cases (1 with foreground: 99% of its voxels, 20 slices), val 1 (1: 1%, 2 slices)'
  )
  lines = split_report.warnings(result, AMOUNTS, data, VOXELS // 10)
  assert lines == [
    'warning: val holds 2 foreground slices: the best checkpoint is chosen on little '
    'evidence; give val more foreground (see above), or judge by the final checkpoint '
    '(--checkpoint=latest)',
  ]


def test_a_split_that_starves_training_is_named_with_its_numbers(tmp_path):
  user = tmp_path / 'mine.json'
  others = [c for c in EIGHT if c not in (LARGE, TINY)]
  user.write_text(json.dumps({'train': [TINY, *others[:5]], 'val': [LARGE], 'test': others[5:]}))
  data = fx.config(splits_file=str(user)).data
  result = splits.make_splits(EIGHT, data, tmp_path / 'w', AMOUNTS)
  lines = split_report.warnings(result, AMOUNTS, data, VOXELS)
  assert lines[0] == (
    'warning: training holds 1% of the foreground voxels (2 of 22 foreground slices, in 1 '
    'of 2 cases with foreground): a model may learn to predict none. '
    f'config.data.splits_file ({user}) assigns the cases so'
  )
  # val holds 20 foreground slices: no warning. 4060 foreground voxels of 983040 (0.41%):
  # oversampling is suggested, unless it is on or the foreground is not rare.
  assert lines[1:] == [
    'note: the foreground is 0.41% of all voxels; config.data.foreground_oversample=0.33 '
    "draws a third of each epoch from foreground slices (nnU-Net's share; the paper's "
    'recipe leaves it at 0)'
  ]
  assert split_report.warnings(result, AMOUNTS, data, VOXELS // 10) == lines[:1]
  data.foreground_oversample = 0.33
  assert split_report.warnings(result, AMOUNTS, data, VOXELS) == lines[:1]


def test_swaps_keep_the_split_sizes_and_stop_when_none_helps(tmp_path):
  """Three equal foreground cases in 1/1/1: training holds a third and no swap raises it
  (the warning says so); one large case among them goes to train."""
  ids = ['a', 'b', 'c']
  equal = {c: splits.Amount(10, 1) for c in ids}
  data = fx.config(split_sizes=(1, 1, 1)).data
  result = splits.make_splits(ids, data, tmp_path / 'eq', equal)
  lines = split_report.warnings(result, equal, data, 3000)
  assert lines[0].startswith('warning: training holds 33% of the foreground voxels')
  assert 'cannot do better with these cases' in lines[0]
  for large in ids:
    amounts = equal | {large: splits.Amount(100, 5)}
    got = splits.make_splits(ids, data, tmp_path / large, amounts)
    assert got['train'] == [large]
    assert sorted(got['val'] + got['test']) == sorted(set(ids) - {large})


# --- a dataset's labelled test set (nnU-Net's imagesTs + labelsTs) -------------------------

HELD = IDS[-5:]


def test_held_out_cases_are_the_test_split_of_the_default_split_and_of_the_folds(tmp_path):
  data = fx.config().data
  got = splits.make_splits(IDS, data, tmp_path / 'default', held_out=HELD)
  _check_partition(got, IDS)
  # 35 training cases by the ratios (0.8 + 0.15, 0.05): val 2, train 33; test the 5 held out
  assert got['test'] == HELD and [len(got[s]) for s in splits.SPLITS] == [33, 2, 5]
  data.update(fold='1', folds=5, cache_dir=str(tmp_path / 'cache'))
  fold = splits.make_splits(IDS, data, tmp_path / 'fold1', held_out=HELD)
  assert fold['test'] == HELD and not set(fold['train'] + fold['val']) & set(HELD)
  stored = json.loads((tmp_path / 'cache' / 'splits_final.json').read_text())
  assert sorted(c for f in stored for c in f['val']) == IDS[:-5]  # each validated once
  assert all(f['test'] == HELD for f in stored)


def test_split_sizes_must_give_the_held_out_cases_as_test(tmp_path):
  data = fx.config(split_sizes=(30, 5, 5)).data
  assert splits.make_splits(IDS, data, tmp_path / 'a', held_out=HELD)['test'] == HELD
  data.split_sizes = (30, 6, 4)
  with pytest.raises(ConfigError, match=r'holds out 5 labelled test cases .*give 5 as the test'):
    splits.check(IDS, data, tmp_path / 'b', held_out=HELD)


def test_a_splits_file_that_trains_on_a_held_out_case_is_refused(tmp_path):
  path = tmp_path / 'mine.json'
  path.write_text(json.dumps({'train': IDS[:-6] + [HELD[0]], 'val': [IDS[-6]], 'test': []}))
  data = fx.config(splits_file=str(path)).data
  with pytest.raises(DataError, match=rf"mine.json: train holds '{HELD[0]}', .*labelsTs"):
    splits.check(IDS, data, tmp_path / 'w', held_out=HELD)


def test_an_nnunet_dataset_with_labelsts_tests_on_it(tmp_path):
  """Prepared from files: the cache knows its held-out cases, and the run's test split is
  them (the 4 training cases split into train and val)."""
  from ecam_jax.data import prepare

  root = fx.write_nnunet(tmp_path / 'data', num_cases=4, test_cases=2, channels=('CT',))
  config = fx.config(root, layout='nnunet', image_size=16)
  cache, got = prepare.prepare_data(config, prepare.prepare_workdir(tmp_path / 'work'))
  assert cache.held_out == ['test_000', 'test_001'] == got['test']
  assert sorted(got['train'] + got['val']) == [f'case_{i:03d}' for i in range(4)]
