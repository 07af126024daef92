"""configuration.check: every config file passes, and every value that cannot work is
refused with a ConfigError naming its key."""

import pathlib

import pytest

from ecam_jax import configuration
from ecam_jax.configuration import check, load_config
from ecam_jax.errors import ConfigError

CONFIGS = pathlib.Path(__file__).parents[1] / 'configs'
DEFAULT = CONFIGS / 'default.py'


def _with(key, value, config=None):
  """A fresh default config (or `config`) with `key` set to `value`."""
  config = load_config(DEFAULT) if config is None else config
  *sections, field = key.split('.')
  node = config
  for section in sections:
    node = node[section]
  node[field] = value
  return config


@pytest.mark.parametrize('name', sorted(p.name for p in CONFIGS.glob('*.py')))
def test_every_config_file_passes(name):
  check(load_config(CONFIGS / name))


# (key, a value that cannot work): each must raise ConfigError naming the key.
BAD = [
  ('seed', -1),
  ('data.layout', 'decathlon'),
  ('data.modality', 'PET'),
  ('data.phantom_cases', -1),
  ('data.phantom_size', 16),
  ('data.image_size', 100),
  ('data.image_size', 0),
  ('data.label_values', (1, 2)),  # no background
  ('data.label_values', (0, 1, 1)),
  ('data.label_values', (0, -1)),
  ('data.foreground_labels', ()),
  ('data.foreground_labels', (0, 1)),
  ('data.foreground_labels', (1.5,)),
  ('data.hu_window', (240.0, -100.0)),
  ('data.hu_window', (0.0,)),
  ('data.mr_percentiles', (5.0, 101.0)),
  ('data.mr_percentiles', (50.0, 50.0)),
  ('data.split_sizes', (8, 0, 2)),
  ('data.split_sizes', (0, 2, 2)),
  ('data.split_sizes', (8, 2)),
  ('data.split_sizes', (8, -1, 2)),
  ('data.split_ratios', (0.5, 0.2, 0.2)),
  ('data.split_ratios', (0.9, 0.0, 0.1)),
  ('data.split_ratios', (1.1, -0.1, 0.0)),
  ('data.split_seed', -3),
  ('data.foreground_oversample', 1.0),
  ('data.foreground_oversample', -0.1),
  ('data.num_workers', -1),
  ('data.prefetch_batches', -1),
  ('data.prepare_workers', 0),
  ('augment.flip_prob', 1.5),
  ('augment.blur_prob', -0.5),
  ('augment.rotate_degrees', -10.0),
  ('augment.blur_sigma', (0.0, 2.0)),
  ('augment.blur_sigma', (2.0, 1.0)),
  ('model.name', 'resnet'),
  ('model.num_classes', 2),
  ('model.num_classes', 0),
  ('model.base_channels', 0),
  ('model.attention', 'transformer'),
  ('model.fusion', 'concat'),
  ('model.attention_impl', 'flash'),
  ('model.dtype', 'float16'),
  ('model.cc_hidden', 0),
  ('model.reduction', 0),
  ('model.cbam_kernel', 4),
  ('model.aspp_rates', ()),
  ('model.aspp_rates', (6, 0)),
  ('model.side_outputs', ('decoder4',)),
  ('model.side_outputs', ('bottleneck', 'bottleneck')),
  ('model.attention_scale', -1.0),
  ('model.attention_scale', 'sqrt'),
  ('model.bn_momentum', 1.5),
  ('model.bn_epsilon', 0.0),
  ('loss.w_dice', -1.0),
  ('loss.w_bce', -0.5),
  ('loss.w_side', -1.0),
  ('loss.alpha', 1.5),
  ('loss.alpha', -0.1),
  ('loss.dice_smooth', -1.0),
  ('train.batch_size', 0),
  ('train.epochs', 0),
  ('train.max_steps', -1),
  ('train.lr', 0.0),
  ('train.schedule', 'linear'),
  ('train.warmup_steps', -1),
  ('train.weight_decay', -1e-4),
  ('train.grad_clip_norm', -1.0),
  ('train.adam_b1', 1.0),
  ('train.adam_b2', -0.1),
  ('train.adam_eps', 0.0),
  ('train.log_every_steps', 0),
  ('train.eval_every_epochs', 0),
  ('train.checkpoint_every_steps', 0),
  ('train.checkpoint_every_seconds', 0.0),
  ('train.keep_checkpoints', 0),
  ('train.nonfinite', 'ignore'),
  ('train.overlay_slices', -1),
  ('eval.batch_size', 0),
  ('eval.overlay_slices', -1),
  ('eval.checkpoint', ''),
]


@pytest.mark.parametrize('key,value', BAD, ids=[f'{k}={v!r}' for k, v in BAD])
def test_bad_value_names_its_key(key, value):
  with pytest.raises(ConfigError, match=rf'config\.{key}\b'):
    check(_with(key, value))


def test_several_logits_need_merge_foreground_off():
  with pytest.raises(ConfigError, match=r'num_classes=3 with config.data.merge_foreground=True'):
    check(_with('model.num_classes', 3))
  config = _with('model.num_classes', 3)
  config.data.merge_foreground = False
  check(config)


def test_foreground_must_be_among_explicit_label_values():
  config = _with('data.label_values', (0, 1))
  with pytest.raises(ConfigError, match=r'config.data.foreground_labels has \[2\]'):
    check(_with('data.foreground_labels', (1, 2), config))
  check(_with('data.foreground_labels', (1,), config))


def test_both_main_loss_weights_zero_is_refused():
  config = _with('loss.w_bce', 0.0, _with('loss.w_dice', 0.0))
  with pytest.raises(ConfigError, match='config.loss.w_dice and config.loss.w_bce'):
    check(config)
  check(_with('loss.alpha', 0.5, config))  # eq. 17's alpha replaces both


def test_every_key_is_required_and_checked():
  """A key missing from a config is named (configs derive from default.py); the keys other
  parts of the program read are checked like the rest."""
  for section, field, good, bad in [
    ('model', 'attention_chunk', 256, 0),
    ('train', 'sync_every_steps', 10, 0),
    ('eval', 'threshold', 0.5, 1.0),
    ('eval', 'keep_components', 2, -1),
    ('eval', 'keep_components', 0.2, 1.5),
  ]:
    config = load_config(DEFAULT)
    del config[section][field]
    with pytest.raises(ConfigError, match=rf'config\.{section}\.{field} is missing'):
      check(config)
    config[section][field] = good
    check(config)
    config[section][field] = bad
    with pytest.raises(ConfigError, match=rf'config\.{section}\.{field}='):
      check(config)


def test_accepted_edges_pass():
  """The ends of each range that work are accepted (a check must not refuse them)."""
  for key, value in [
    ('data.foreground_oversample', 0.0),
    ('augment.flip_prob', 1.0),
    ('augment.blur_sigma', (1.0, 1.0)),
    ('loss.alpha', 0.0),
    ('loss.alpha', 1.0),
    ('model.attention_scale', 'rsqrt'),
    ('data.split_ratios', (0.9, 0.1, 0.0)),
    ('data.split_sizes', (8, 2, 0)),
    ('data.modality', 'MR'),
    ('data.foreground_labels', (1,)),
    ('train.max_steps', 0),
    ('data.num_workers', 0),
  ]:
    check(_with(key, value))


def _leaves(config, prefix=''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


# Numeric or word-valued keys of default.py checked by dedicated code in configuration.py
# rather than by the CHOICES / INTEGERS / INTERVALS tables.
CHECKED_ELSEWHERE = {
  'data.hu_window',
  'data.mr_percentiles',
  'data.split_ratios',
  'data.split_sizes',
  'data.fold',  # '', a fold number below data.folds, or 'all'
  'data.label_values',
  'data.foreground_labels',
  'augment.blur_sigma',
  'eval.checkpoint',
  'eval.keep_components',
  'data.classes',  # parsed by check; the values against the dataset by classes.resolve
  'data.regions',
  'loss.class_weights',
  'train.best_by',  # a string by check; a scored name by classes.resolve
}
# Keys whose every value works: paths, labels, switches and names.
FREE = {
  'data.root',
  'data.source',
  'data.dataset',
  'data.cache_dir',
  'data.splits_file',
  'data.channels',  # names; checked against the dataset by layouts.resolve_settings
  'data.ct_statistics',  # numbers checked by check; computed from the data when unset
}


def test_every_number_and_word_of_default_py_is_checked():
  """A key added to default.py without a check fails here until it gets one. (config.model
  is each network's declared options, checked from the declaration: tests/test_options.py.)"""
  tables = {*configuration.CHOICES, *configuration.INTEGERS, *configuration.INTERVALS}
  unchecked = [
    key
    for key, value in _leaves(load_config(DEFAULT))
    if not isinstance(value, bool)
    and not key.startswith('model.')
    and key not in tables | CHECKED_ELSEWHERE | FREE
    and (value is None or isinstance(value, (int, float, str, tuple)))
  ]
  assert unchecked == []
