"""What a run segments: one merged foreground (the paper's binary setting) or several
named classes, and what is scored.

- Binary (`config.data.merge_foreground`, the default): every label value in
  `data.foreground_labels` is one foreground; the network has 1 logit (sigmoid), a pixel is
  foreground where its probability is > `eval.threshold`, and predictions write 1.
- Multi-class: `data.classes` names K classes with one label value each ('pancreas:1,
  tumour:2'); the network has K + 1 logits (softmax, index 0 background, index k the k-th
  class), a pixel takes the argmax, and predictions write the classes' own label values.
  Label values named by no class are background. `data.regions` adds unions of classes
  that are scored too (nnU-Net's regions, e.g. KiTS19's 'kidney_and_tumour:1+2').

Scored items are (name, label values) pairs: the classes (and regions) of a multi-class
run, or ('foreground', data.foreground_labels) of a binary one. Everything here reads the
config only; no jax.
"""

import re

import ml_collections
import numpy as np

from ecam_jax.errors import ConfigError

BINARY_NAME = 'foreground'
_NAME = re.compile(r'^[A-Za-z][A-Za-z0-9_-]*$')


def _items(text: str, key: str, what: str) -> list[tuple[str, str]]:
  pairs = []
  for item in filter(None, (s.strip() for s in str(text).split(','))):
    name, sep, value = (s.strip() for s in item.partition(':'))
    if not sep or not _NAME.match(name) or not value:
      raise ConfigError(
        f'{key}={text!r}: {item!r} is not understood; expected {what}, names starting '
        'with a letter (letters, digits, _ and -)'
      )
    pairs.append((name, value))
  names = [n for n, _ in pairs]
  if len(set(names)) != len(names) or BINARY_NAME in names or 'mean' in names:
    raise ConfigError(f'{key}={text!r}: names must be distinct and not {BINARY_NAME!r} or "mean"')
  return pairs


def _value(text: str, key: str, whole: str) -> int:
  if not text.isdigit() or int(text) < 1:
    raise ConfigError(f'{key}={whole!r}: {text!r} is not a label value (an integer >= 1)')
  return int(text)


def parse_classes(text: str, key: str = 'config.data.classes') -> tuple[tuple[str, int], ...]:
  """'pancreas:1,tumour:2' -> (('pancreas', 1), ('tumour', 2)); '' -> ()."""
  classes = tuple((n, _value(v, key, text)) for n, v in _items(text, key, 'name:value,...'))
  values = [v for _, v in classes]
  if len(set(values)) != len(values):
    raise ConfigError(f'{key}={text!r}: two classes have the same label value')
  return classes


def parse_regions(
  text: str, key: str = 'config.data.regions'
) -> tuple[tuple[str, tuple[int, ...]], ...]:
  """'kidney_and_tumour:1+2' -> (('kidney_and_tumour', (1, 2)),); '' -> ()."""
  regions = []
  for name, value in _items(text, key, 'name:value+value,...'):
    values = tuple(sorted({_value(v.strip(), key, text) for v in value.split('+')}))
    regions.append((name, values))
  return tuple(regions)


def format_classes(classes: tuple[tuple[str, int], ...]) -> str:
  return ','.join(f'{name}:{value}' for name, value in classes)


def format_regions(regions: tuple[tuple[str, tuple[int, ...]], ...]) -> str:
  return ','.join(f'{name}:{"+".join(str(v) for v in values)}' for name, values in regions)


def is_multiclass(config: ml_collections.ConfigDict) -> bool:
  return not config.data.merge_foreground


def classes_of(config: ml_collections.ConfigDict) -> tuple[tuple[str, int], ...]:
  """The run's classes (resolved: `resolve` has run), in logit order 1..K."""
  classes = parse_classes(config.data.classes)
  if not classes:
    raise ConfigError(
      'config.data.classes is unset: it is resolved from the data (source.resolve_data) '
      "before a multi-class model is built; or set it, e.g. 'pancreas:1,tumour:2'"
    )
  return classes


def scored(config: ml_collections.ConfigDict) -> tuple[tuple[str, tuple[int, ...]], ...]:
  """(name, label values) of everything a run scores: the classes then the regions, or
  the one merged foreground of a binary run."""
  if not is_multiclass(config):
    return ((BINARY_NAME, tuple(int(v) for v in config.data.foreground_labels or ())),)
  classes = tuple((name, (value,)) for name, value in classes_of(config))
  return classes + parse_regions(config.data.regions)


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The names averaged into the mean foreground score (regions are not)."""
  if not is_multiclass(config):
    return (BINARY_NAME,)
  return tuple(name for name, _ in classes_of(config))


def output_label_values(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The label value written for each output index: (0, 1) for a binary run (a mask),
  (0, v1, .., vK) for K classes (argmax index k -> the k-th class's value)."""
  if not is_multiclass(config):
    return (0, 1)
  return (0, *(value for _, value in classes_of(config)))


def membership(config: ml_collections.ConfigDict) -> np.ndarray:
  """bool [C, K + 1]: row c says which output indices belong to scored item c (a class is
  its own index, a region the indices of its values). Binary: [[False, True]]."""
  if not is_multiclass(config):
    return np.array([[False, True]])
  outputs = output_label_values(config)
  rows = [[i > 0 and v in values for i, v in enumerate(outputs)] for _, values in scored(config)]
  return np.asarray(rows, bool)


def index_lookup(data_config: ml_collections.ConfigDict, label_values) -> np.ndarray:
  """uint8 [max label value + 1]: raw label value -> training target (binary: 1 for a
  value in data.foreground_labels; multi-class: the class's output index; else 0)."""
  top = max([0, *(int(v) for v in label_values)])
  lookup = np.zeros(top + 1, np.uint8)
  if data_config.merge_foreground:
    lookup[[int(v) for v in data_config.foreground_labels if int(v) <= top]] = 1
    return lookup
  for index, (_, value) in enumerate(parse_classes(data_config.classes), start=1):
    if value <= top:
      lookup[value] = index
  return lookup


def resolve(config: ml_collections.ConfigDict, declared_names: dict[int, str]) -> None:
  """Fills config.data.classes (multi-class, when unset) and config.model.num_classes.

  Classes default to the foreground label values with the names the dataset declares
  (dataset.json "labels"; `declared_names`), else 'label<value>'. A class or region value
  the dataset does not declare, a model.num_classes other than the classes' count plus 1,
  a loss.class_weights of the wrong length or a train.best_by that names nothing scored
  raise ConfigError naming the key. Running it again on its own result is a no-op.
  """
  data, model = config.data, config.model
  if not is_multiclass(config):
    logits = 1  # configuration.check refuses another model.num_classes
  else:
    if not parse_classes(data.classes):
      if data.foreground_labels is None:
        raise ConfigError(
          'config.data.classes is unset and so are the label values it defaults from; set '
          "config.data.classes, e.g. 'pancreas:1,tumour:2'"
        )
      data.classes = format_classes(
        tuple((declared_names.get(v) or f'label{v}', v) for v in data.foreground_labels)
      )
    classes = classes_of(config)
    values = [v for _, v in classes] + [v for _, vs in parse_regions(data.regions) for v in vs]
    declared = set(values) if data.label_values is None else {int(v) for v in data.label_values}
    missing = sorted(set(values) - declared)
    if missing:
      raise ConfigError(
        f'config.data.classes/regions name label values {missing} that the dataset does not '
        f'declare (label values {sorted(declared)})'
      )
    logits = len(classes) + 1
    if model.num_classes not in (1, logits):
      raise ConfigError(
        f'config.model.num_classes={model.num_classes}; the {len(classes)} classes of '
        f'config.data.classes={data.classes!r} need {logits} logits (leave it at 1: set from '
        'the classes)'
      )
    model.num_classes = logits
  weights = config.loss.class_weights
  if weights is not None and len(weights) != logits + (logits == 1):
    raise ConfigError(
      f'config.loss.class_weights={tuple(weights)}; expected {logits + (logits == 1)} '
      'weights, background first'
    )
  best = config.train.best_by
  names = [name for name, _ in scored(config)]
  if best != 'mean' and best not in names:
    raise ConfigError(f"config.train.best_by={best!r}; expected 'mean' or one of {names}")
