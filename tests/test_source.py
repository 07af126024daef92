"""Where the data comes from: the dataset settings filled in for training (from dataset.json)
and for prediction without a dataset (from the workdir's config.json)."""

import json

import pytest

from ecam_jax.configuration import load_config
from ecam_jax.data import source, splits
from ecam_jax.errors import ConfigError

import nifti_fixtures as fx


def _write_task(root, modality='MRI'):
  root.mkdir(parents=True)
  meta = {
    'modality': {'0': modality},
    'labels': {'0': 'background', '1': 'left atrium'},
    'training': [],
  }
  (root / 'dataset.json').write_text(json.dumps(meta))


def test_resolve_data_fills_the_settings_and_lists_the_cases(tmp_path):
  fx.write_msd(tmp_path / 'data', num_cases=2)
  config = fx.config(tmp_path / 'data')
  cases = source.resolve_data(config, tmp_path / 'work')
  assert [c.case_id for c in cases] == ['case_000', 'case_001']
  assert (config.data.modality, config.data.label_values, config.data.foreground_labels) == (
    'CT',
    (0, 1, 2),
    (1, 2),
  )


def test_missing_root_fails_before_any_settings(tmp_path):
  config = fx.config(tmp_path / 'nowhere')
  config.data.source = 'Download it from example.org.'
  with pytest.raises(ConfigError, match=r"config.data.root '.*nowhere' does not exist.*example"):
    source.resolve_data(config, tmp_path / 'work')


def test_predict_reads_settings_from_the_dataset_when_root_is_set(tmp_path):
  _write_task(tmp_path / 'task')
  config = fx.config(tmp_path / 'task')
  source.resolve_settings(config, tmp_path / 'work')
  assert (config.data.modality, config.data.foreground_labels) == ('MR', (1,))


def test_predict_without_root_uses_what_training_recorded(tmp_path):
  workdir = tmp_path / 'work'
  workdir.mkdir()
  trained = {'data': {'modality': 'MR', 'label_values': [0, 1], 'foreground_labels': [1]}}
  (workdir / 'config.json').write_text(json.dumps(trained))
  config = fx.config()
  source.resolve_settings(config, workdir)
  assert (config.data.modality, config.data.label_values, config.data.foreground_labels) == (
    'MR',
    (0, 1),
    (1,),
  )
  explicit = fx.config(modality='CT')  # the user's explicit setting is not replaced
  source.resolve_settings(explicit, workdir)
  assert explicit.data.modality == 'CT'


def test_predict_without_root_or_record_asks_for_the_modality(tmp_path):
  with pytest.raises(ConfigError, match=r'config.data.channels .* is unset .*config.json'):
    source.resolve_settings(fx.config(), tmp_path)
  config = fx.config(modality='MR')
  source.resolve_settings(config, tmp_path)
  assert config.data.modality == 'MR'


def test_demo_config_on_a_four_case_folder_fails_before_the_cache(tmp_path):
  """Issue 11 item 9: the demo's split sizes (8, 2, 2) against 4 cases fail from the case
  list alone, before a volume is read or a cache folder made."""
  fx.write_msd(tmp_path / 'four', num_cases=4)
  config = load_config(fx.CONFIG.with_name('demo.py'))
  config.data.root = str(tmp_path / 'four')
  cases = source.resolve_data(config, tmp_path / 'work')
  with pytest.raises(ConfigError, match=r'\(8, 2, 2\) \(sum 12\) but 4 cases were found'):
    splits.check([c.case_id for c in cases], config.data, tmp_path / 'work')
  assert not (tmp_path / 'work').exists()
