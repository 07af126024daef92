"""Case splits: deterministic, disjoint, the paper's sizes, ratios, and a user's file."""

import json

import pytest

from ecam_jax.configuration import ConfigError
from ecam_jax.data import splits
from ecam_jax.data.errors import DataError

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
