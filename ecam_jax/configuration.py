"""Reading `get_config(arg)` arguments, loading config files, and checking configs.

A config a user wrote by hand or overrode on the command line is checked here, once,
before anything is built, so that a wrong key fails with a message naming it.
"""

import importlib.util
import pathlib
import sys
from types import ModuleType
from typing import Any

import ml_collections
from absl import flags

from ecam_jax import classes, former_keys
from ecam_jax.errors import ConfigError
from ecam_jax.models import registry
from ecam_jax.models.options import in_interval
from ecam_jax.recipes import RECIPES


def parse_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
  """Parses 'key=value,key=value' (the part after ':' in --config=file.py:ARG)."""
  values = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    key = key.strip()
    if not sep or key not in defaults:
      raise ConfigError(
        f'config argument {item!r} is not understood; expected key=value with key in '
        f'{sorted(defaults)}'
      )
    values[key] = type(defaults[key])(value.strip()) if defaults[key] is not None else value
  return values


def load_module(path: str | pathlib.Path) -> ModuleType:
  """Imports a config file by path (configs/ is a folder of files, not a package)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f'config file {path} does not exist')
  spec = importlib.util.spec_from_file_location(f'ecam_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(path: str | pathlib.Path, arg: str | None = None) -> ml_collections.ConfigDict:
  """What --config=PATH:ARG gives, for tests, notebooks and derived configs."""
  return load_module(path).get_config(arg)


def _argv_config(argv: list[str]) -> ml_collections.ConfigDict | None:
  """The config the last --config=PATH[:ARG] in `argv` names (the one absl keeps), or None
  (config_flags then reports the problem)."""
  for i, item in reversed(list(enumerate(argv))):
    value = None
    if item.startswith('--config='):
      value = item.split('=', 1)[1]
    elif item == '--config' and i + 1 < len(argv):
      value = argv[i + 1]
    if value is not None:
      path, _, arg = value.partition(':')
      try:
        return load_config(path, arg or None)
      except ConfigError:
        return None
  return None


def _has(config: ml_collections.ConfigDict, key: str) -> bool:
  node = config
  for part in key.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (`app.run(main, flags_parser=parse_flags)` in the commands that
  take --config), with a --config.KEY override of a key the config does not have refused
  by a message that names it: its new name if it was renamed, else the network's options."""
  config = _argv_config(argv)
  for item in argv:
    for prefix in ('--config.', '--noconfig.'):
      if config is not None and item.startswith(prefix):
        key = item[len(prefix) :].split('=', 1)[0]
        if not _has(config, key):
          model = config.model.to_dict() if 'model' in config else {}
          sys.exit(f'error: {former_keys.explain(key, model)}')
  return flags.FLAGS(argv)


def sibling_config(this_file: str, name: str, arg: str | None = None):
  """Loads configs/NAME next to `this_file`: how dataset configs derive from default.py."""
  return load_config(pathlib.Path(this_file).with_name(name), arg)


# Keys whose value is one of a few words, and the words.
CHOICES = {
  'data.layout': ('msd', 'nnunet', 'kits19', 'paired'),
  'data.ct_normalization': ('window', 'nnunet'),
  'data.modality': ('', 'CT', 'MR'),  # '': what dataset.json declares (msd), else CT
  'recipe': tuple(RECIPES),
  'train.schedule': ('cosine', 'poly', 'constant'),
  'train.optimizer': ('adam', 'sgd'),
  'train.nesterov': (True, False),
  'loss.deep_supervision': ('paper', 'nnunet'),
  'augment.pipeline': ('paper', 'nnunet'),
  'train.nonfinite': ('stop', 'skip'),
}

# Integer keys and the smallest value that works.
INTEGERS = {
  'seed': 0,
  'data.phantom_cases': 0,
  'data.phantom_size': 32,
  'data.image_size': 16,
  'data.split_seed': 0,
  'data.folds': 2,
  'data.num_workers': 0,
  'data.prefetch_batches': 0,
  'data.prepare_workers': 1,
  'train.batch_size': 1,
  'train.epochs': 1,
  'train.max_steps': 0,
  'train.warmup_steps': 0,
  'train.log_every_steps': 1,
  'train.eval_every_epochs': 1,
  'train.checkpoint_every_steps': 1,
  'train.keep_checkpoints': 1,
  'train.overlay_slices': 0,
  'train.sync_every_steps': 1,
  'eval.batch_size': 1,
  'eval.overlay_slices': 0,
}

# Number keys and the interval their value must lie in ('[' includes the end, '(' not).
INTERVALS = {
  'data.foreground_oversample': '[0, 1)',
  'data.phantom_lesion_prob': '[0, 1]',
  'data.phantom_lesion_scale': '(0, inf)',
  'data.phantom_lesion_drop_hu': '[0, inf)',
  'augment.flip_prob': '[0, 1]',
  'augment.blur_prob': '[0, 1]',
  'augment.rotate_degrees': '[0, 180]',
  'loss.w_dice': '[0, inf)',
  'loss.w_bce': '[0, inf)',
  'loss.w_side': '[0, inf)',
  'loss.alpha': '[0, 1]',  # None: w_dice and w_bce instead
  'loss.dice_smooth': '[0, inf)',
  'train.lr': '(0, inf)',
  'train.weight_decay': '[0, inf)',
  'train.grad_clip_norm': '[0, inf)',
  'train.adam_b1': '[0, 1)',
  'train.adam_b2': '[0, 1)',
  'train.adam_eps': '(0, inf)',
  'train.momentum': '[0, 1)',
  'train.poly_exponent': '(0, inf)',
  'train.checkpoint_every_seconds': '(0, inf)',
  'eval.threshold': '(0, 1)',
}

# Keys whose None means "unset" (eq. 17's alpha: the weights w_dice, w_bce apply).
_OPTIONAL = ('loss.alpha',)


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  """config's value at 'section.field' (or 'field'); a missing key is a ConfigError."""
  node = config
  for part in key.split('.'):
    if part not in node:
      raise ConfigError(
        f'config.{key} is missing: a config derives from configs/default.py, which sets every '
        'key with its default (load it with configuration.sibling_config or load_config)'
      )
    node = node[part]
  return node


def _is_number(value: Any, integer: bool = False) -> bool:
  kinds = (int,) if integer else (int, float)
  return isinstance(value, kinds) and not isinstance(value, bool)


def _check_pair(config: ml_collections.ConfigDict, key: str, low: float, high: float) -> None:
  """A (lo, hi) pair of numbers with low <= lo < hi <= high."""
  value = _get(config, key)
  pair = tuple(value) if isinstance(value, (tuple, list)) else ()
  if not (len(pair) == 2 and all(_is_number(v) for v in pair) and low <= pair[0] < pair[1] <= high):
    bounds = f'{low} <= lo < hi <= {high}' if high < float('inf') else 'lo < hi'
    raise ConfigError(f'config.{key}={value!r}; expected two numbers (lo, hi) with {bounds}')


def _check_labels(config: ml_collections.ConfigDict, key: str) -> tuple[int, ...] | None:
  """None (unset: the dataset decides) or distinct integer label values >= 0."""
  value = _get(config, key)
  if value is None:
    return None
  values = tuple(value) if isinstance(value, (tuple, list)) else ()
  if not values or not all(_is_number(v, integer=True) and v >= 0 for v in values):
    raise ConfigError(f'config.{key}={value!r}; expected a tuple of integer label values >= 0')
  if len(set(values)) != len(values):
    raise ConfigError(f'config.{key}={value!r} repeats a value')
  return values


def _check_data(config: ml_collections.ConfigDict) -> None:
  data = config.data
  _check_pair(config, 'data.hu_window', float('-inf'), float('inf'))
  _check_pair(config, 'data.mr_percentiles', 0.0, 100.0)
  label_values = _check_labels(config, 'data.label_values')
  foreground = _check_labels(config, 'data.foreground_labels')
  if label_values is not None and 0 not in label_values:
    raise ConfigError(
      f'config.data.label_values={label_values}; expected every value a label file holds, '
      'background 0 among them'
    )
  if foreground is not None and 0 in foreground:
    raise ConfigError(
      f'config.data.foreground_labels={foreground}; 0 is background, expected values > 0'
    )
  if foreground is not None and label_values is not None:
    undeclared = sorted(set(foreground) - set(label_values))
    if undeclared:
      raise ConfigError(
        f'config.data.foreground_labels has {undeclared}, not among '
        f'config.data.label_values={label_values}'
      )
  channels = _get(config, 'data.channels')
  if channels is not None and not (
    isinstance(channels, (tuple, list))
    and channels
    and all(isinstance(c, str) and c for c in channels)
  ):
    raise ConfigError(
      f"config.data.channels={channels!r}; expected the name of each channel, e.g. ('T2', 'ADC')"
    )
  statistics = _get(config, 'data.ct_statistics')
  if statistics is not None and not (
    isinstance(statistics, (tuple, list))
    and all(
      isinstance(s, (tuple, list))
      and len(s) == 4
      and all(_is_number(v) for v in s)
      and s[0] <= s[1]
      and s[3] > 0
      for s in statistics
    )
  ):
    raise ConfigError(
      f'config.data.ct_statistics={statistics!r}; expected one (p_lo, p_hi, mean, std) per CT '
      'channel with p_lo <= p_hi and std > 0 (computed with the cache when unset)'
    )
  fold = _get(config, 'data.fold')
  if not (fold in ('', 'all') or (isinstance(fold, str) and fold.isdigit())):
    raise ConfigError(
      f"config.data.fold={fold!r}; expected '' (the train/val/test split), a fold number "
      "such as '0', or 'all'"
    )
  if fold.isdigit() and not data.splits_file and int(fold) >= data.folds:
    raise ConfigError(
      f'config.data.fold={fold!r} with config.data.folds={data.folds}; expected a fold '
      f"number 0 .. {data.folds - 1}, or 'all'"
    )
  classes.parse_classes(data.classes)  # ConfigError naming the key and the item
  classes.parse_regions(data.regions)
  sizes = data.split_sizes
  if sizes is not None:
    sizes = tuple(sizes)
    if not (len(sizes) == 3 and all(_is_number(s, integer=True) and s >= 0 for s in sizes)):
      raise ConfigError(
        f'config.data.split_sizes={sizes}; expected three case counts (train, val, test) >= 0'
      )
    if min(sizes[:2]) < 1:
      raise ConfigError(f'config.data.split_sizes={sizes}; train and val need at least one case')
  ratios = tuple(data.split_ratios)
  if not (
    len(ratios) == 3
    and all(_is_number(r) and r >= 0 for r in ratios)
    and abs(sum(ratios) - 1) <= 1e-6
    and min(ratios[:2]) > 0
  ):
    raise ConfigError(
      f'config.data.split_ratios={ratios}; expected three fractions (train, val, test) that '
      'add up to 1, train and val > 0'
    )


def _check_model(config: ml_collections.ConfigDict) -> None:
  """config.model against its network's declared options, and what the model and the data
  must agree on."""
  options = registry.options_of(config.model)
  if options.num_classes > 1 and config.data.merge_foreground:
    raise ConfigError(
      f'config.model.num_classes={options.num_classes} with config.data.merge_foreground=True '
      '(one merged foreground: 1 logit); set merge_foreground=False for several classes'
    )
  multiple = options.input_multiple()
  if config.data.image_size % multiple:
    raise ConfigError(
      f'config.data.image_size={config.data.image_size}; the network {config.model.name!r} '
      f'with these options needs a multiple of {multiple}'
    )


def _check_loss(config: ml_collections.ConfigDict) -> None:
  loss = config.loss
  weights = _get(config, 'loss.class_weights')
  if weights is not None and not (
    isinstance(weights, (tuple, list))
    and len(weights) >= 2
    and all(_is_number(w) and w >= 0 for w in weights)
    and any(w > 0 for w in weights[1:])
  ):
    raise ConfigError(
      f'config.loss.class_weights={weights!r}; expected one number >= 0 per logit class, '
      'background first, a foreground one > 0'
    )
  if loss.alpha is None and loss.w_dice + loss.w_bce == 0:
    raise ConfigError(
      'config.loss.w_dice and config.loss.w_bce are both 0: the main output would not be trained'
    )


def _check_eval(config: ml_collections.ConfigDict) -> None:
  keep = _get(config, 'eval.keep_components')

  def one(value) -> bool:
    return (_is_number(value, integer=True) and value >= 0) or (
      isinstance(value, float) and 0 < value < 1
    )

  each = keep if isinstance(keep, (tuple, list)) and keep else [keep]
  if keep is not None and not all(one(v) for v in each):
    raise ConfigError(
      f'config.eval.keep_components={keep!r}; expected 0 (off), an integer k >= 1 (the k '
      'largest components) or a fraction in (0, 1) of the largest component, for every '
      "class or as a tuple of one per class; or None (the cross-validation's choice)"
    )
  best = _get(config, 'train.best_by')
  if not isinstance(best, str) or not best:
    raise ConfigError(f"config.train.best_by={best!r}; expected 'mean' or a class name")
  which = config.eval.checkpoint
  if not isinstance(which, str) or not which:
    raise ConfigError(
      f"config.eval.checkpoint={which!r}; expected 'best', 'latest' or a checkpoint path"
    )


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first key whose value cannot work.

  Runs before anything is built: every value it accepts trains, evaluates and predicts.
  """
  for key, allowed in CHOICES.items():
    if _get(config, key) not in allowed:
      raise ConfigError(f'config.{key}={_get(config, key)!r}; expected one of {list(allowed)}')
  for key, low in INTEGERS.items():
    value = _get(config, key)
    if value is None and key in _OPTIONAL:
      continue
    if not (_is_number(value, integer=True) and value >= low):
      raise ConfigError(f'config.{key}={value!r}; expected an integer >= {low}')
  for key, interval in INTERVALS.items():
    value = _get(config, key)
    if value is None and key in _OPTIONAL:
      continue
    if not (_is_number(value) and in_interval(value, interval)):
      raise ConfigError(f'config.{key}={value!r}; expected a number in {interval}')
  sigma = tuple(config.augment.blur_sigma)
  if not (len(sigma) == 2 and all(_is_number(v) for v in sigma) and 0 < sigma[0] <= sigma[1]):
    raise ConfigError(
      f'config.augment.blur_sigma={sigma}; expected (lo, hi) in pixels with 0 < lo <= hi'
    )
  _check_data(config)
  _check_model(config)
  _check_loss(config)
  _check_eval(config)
