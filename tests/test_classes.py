"""What a run segments and scores (ecam_jax/classes.py): parsing, defaults from
dataset.json, the logit count, the label lookup and the scored items, and the config
errors a user can cause."""

import json

import numpy as np
import pytest

from ecam_jax import classes, resume
from ecam_jax.configuration import check, load_config
from ecam_jax.data import layouts, source
from ecam_jax.errors import ConfigError


def _config(**data):
  config = load_config('configs/default.py')
  config.data.update(data)
  return config


def test_parse_classes_and_regions():
  assert classes.parse_classes(' pancreas:1, tumour:2 ') == (('pancreas', 1), ('tumour', 2))
  assert classes.parse_classes('') == ()
  assert classes.parse_regions('kidney_and_tumour:2+1,t:2') == (
    ('kidney_and_tumour', (1, 2)),
    ('t', (2,)),
  )


@pytest.mark.parametrize(
  ('text', 'match'),
  [
    ('pancreas', 'not understood'),
    ('1:1', 'not understood'),
    ('a:0', 'not a label value'),
    ('a:x', 'not a label value'),
    ('a:1,a:2', 'distinct'),
    ('a:1,b:1', 'same label value'),
    ('foreground:1', 'distinct'),
  ],
)
def test_bad_class_specs_name_the_key(text, match):
  with pytest.raises(ConfigError, match=rf'config\.data\.classes=.*{match}'):
    check(_config(classes=text, merge_foreground=False))


def test_binary_run_keeps_one_logit_and_one_scored_item():
  config = _config(foreground_labels=(1, 2), label_values=(0, 1, 2))
  classes.resolve(config, {1: 'pancreas', 2: 'tumour'})
  assert config.model.num_classes == 1 and config.data.classes == ''
  assert classes.scored(config) == (('foreground', (1, 2)),)
  np.testing.assert_array_equal(classes.membership(config), [[False, True]])
  np.testing.assert_array_equal(classes.index_lookup(config.data, (3,)), [0, 1, 1, 0])
  assert classes.output_label_values(config) == (0, 1)


def test_multiclass_defaults_from_the_declared_names_and_is_idempotent():
  config = _config(
    merge_foreground=False, foreground_labels=(1, 2), label_values=(0, 1, 2), regions='all:1+2'
  )
  classes.resolve(config, {1: 'pancreas', 2: 'tumour'})
  assert config.data.classes == 'pancreas:1,tumour:2' and config.model.num_classes == 3
  classes.resolve(config, {})
  assert config.data.classes == 'pancreas:1,tumour:2' and config.model.num_classes == 3
  assert classes.scored(config) == (('pancreas', (1,)), ('tumour', (2,)), ('all', (1, 2)))
  assert classes.class_names(config) == ('pancreas', 'tumour')
  np.testing.assert_array_equal(classes.membership(config), [[0, 1, 0], [0, 0, 1], [0, 1, 1]])
  assert classes.output_label_values(config) == (0, 1, 2)


def test_multiclass_lookup_maps_values_to_indices_in_class_order():
  config = _config(merge_foreground=False, classes='tumour:5,organ:2', label_values=(0, 2, 3, 5))
  classes.resolve(config, {})
  # Value 3 is named by no class: background. Index order is the order of data.classes.
  np.testing.assert_array_equal(classes.index_lookup(config.data, (5,)), [0, 0, 2, 0, 0, 1])
  assert classes.output_label_values(config) == (0, 5, 2)


@pytest.mark.parametrize(
  ('changes', 'match'),
  [
    ({'data.classes': 'a:1,b:4'}, r'label values \[4\]'),
    ({'data.regions': 'r:1+7'}, r'label values \[7\]'),
    ({'model.num_classes': 4}, 'num_classes=4; the 2 classes'),
    ({'loss.class_weights': (1.0, 2.0)}, 'expected 3 weights'),
    ({'train.best_by': 'liver'}, "best_by='liver'"),
  ],
)
def test_resolve_refuses_what_does_not_fit_the_classes(changes, match):
  config = _config(merge_foreground=False, classes='a:1,b:2', label_values=(0, 1, 2))
  for key, value in changes.items():
    section, name = key.split('.')
    config[section][name] = value
  with pytest.raises(ConfigError, match=match):
    classes.resolve(config, {})


@pytest.mark.parametrize(
  ('changes', 'match'),
  [
    ({'model.num_classes': 3}, 'merge_foreground=True'),
    ({'loss.class_weights': (1.0, -1.0)}, 'class_weights'),
    ({'loss.class_weights': (1.0, 0.0)}, 'class_weights'),
  ],
)
def test_check_refuses_bad_class_settings(changes, match):
  config = _config()
  for key, value in changes.items():
    section, name = key.split('.')
    config[section][name] = value
  with pytest.raises(ConfigError, match=match):
    check(config)


def test_msd_dataset_json_names_become_identifiers(tmp_path):
  (tmp_path / 'dataset.json').write_text(
    json.dumps({'labels': {'0': 'background', '1': 'left atrium', '2': '3rd'}, 'training': []})
  )
  data = _config(root=str(tmp_path), layout='msd').data
  assert layouts.declared_names(data) == {0: 'background', 1: 'left_atrium', 2: 'label2'}
  assert layouts.declared_names(_config(layout='paired').data) == {}


def test_predict_restores_the_classes_from_config_json(tmp_path):
  (tmp_path / 'config.json').write_text(
    json.dumps({'data': {'modality': 'CT', 'classes': 'organ:1,lesion:2'}})
  )
  config = _config(merge_foreground=False)
  source.resolve_settings(config, tmp_path)
  assert config.data.classes == 'organ:1,lesion:2' and config.model.num_classes == 3


def test_a_checkpoint_from_before_the_class_keys_resumes_as_binary():
  """A checkpoint's config written before these keys existed lacks them; it was trained as
  one merged foreground, so the binary config resumes it and a multi-class one does not."""
  config = _config()
  saved = resume.flatten(config)
  for key in ('data.merge_foreground', 'data.classes', 'data.regions', 'loss.class_weights'):
    del saved[key]
  assert resume.changes(saved, config) == []
  config.data.merge_foreground = False
  assert [key for key, *_ in resume.changes(saved, config)] == ['data.merge_foreground']
