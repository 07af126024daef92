"""A network's options: the fields of `config.model` besides `name` and `variant`.

Each network declares its options as a frozen dataclass beside its module
(`<network>_options.py`, which imports no jax, so that loading a config file does not
either): one field per option, with its type, its default and `option(...)` metadata (a
one-line description, the values it may take, how a resumed run may change it). The
dataclass subclasses `Options`, whose fields every network has, and may add constraints
between fields in `check`. Its defaults are the network's reference settings; named
`Preset`s change some of them (the paper's variants of the U-Net).

`from_config` validates `config.model` against that declaration (every key an option,
every value of the declared type and range) and returns the frozen dataclass the network
module receives as its `options` field (frozen, so hashable: jit caches by it).
"""

import abc
import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

import ml_collections
from ml_collections import config_dict

from ecam_jax.errors import ConfigError

# How a resumed run may change an option (resume.py): ARCHITECTURE options decide the
# parameter tree and never change; NUMERICS change what is computed (allowed with
# --resume_with_changes); FREE options compute the same function another way.
ARCHITECTURE, NUMERICS, FREE = 'architecture', 'numerics', 'free'
RESUME_KINDS = (ARCHITECTURE, NUMERICS, FREE)

# config.model keys that are not options: the network's registry name and the preset's name.
NOT_OPTIONS = ('name', 'variant')

# The ways models/attention.py computes softmax(q k^T) v (the U-Net's SC, DA-Net's PAM).
ATTENTION_IMPLS = ('fused', 'chunked', 'naive')


def option(
  default: Any,
  doc: str,
  *,
  choices: tuple | None = None,
  interval: str | None = None,
  resume: str = ARCHITECTURE,
) -> Any:
  """A field of an options dataclass. doc: one line, what it does. choices: the values
  allowed. interval: for a number, '[lo, hi)' with '[' or '(' at each end ('inf' allowed);
  for an integer, its smallest value as '[lo, inf)'. resume: ARCHITECTURE, NUMERICS or
  FREE."""
  if resume not in RESUME_KINDS:
    raise ValueError(f'resume={resume!r}; expected one of {RESUME_KINDS}')
  metadata = {'doc': doc, 'choices': choices, 'interval': interval, 'resume': resume}
  return dataclasses.field(default=default, metadata=metadata)


def attention_impl(default: str) -> Any:
  """The `attention_impl` option of a network with a softmax attention over positions."""
  return option(
    default,
    "how the attention is computed: 'fused' (jax.nn.dot_product_attention), 'chunked' "
    '(attention_chunk query rows at a time, each block recomputed in the backward pass) '
    "or 'naive' (the whole score matrix); the same function",
    choices=ATTENTION_IMPLS,
    resume=FREE,
  )


def attention_chunk() -> Any:
  """The `attention_chunk` option that goes with `attention_impl`."""
  return option(
    256,
    "'chunked' attention: query rows per block (smaller: less memory, slower)",
    interval='[1, inf)',
    resume=FREE,
  )


@dataclasses.dataclass(frozen=True)
class Options(abc.ABC):
  """The options every network has."""

  in_channels: int = option(
    1, 'input channels per pixel, set from data.channels (their count)', interval='[1, inf)'
  )
  num_classes: int = option(
    1,
    'logits per pixel: 1 (one merged foreground, sigmoid), or K + 1 (softmax) set from '
    'data.classes when data.merge_foreground is False',
    interval='[1, inf)',
  )
  dtype: str = option(
    'float32',
    'compute dtype; parameters stay float32',
    choices=('float32', 'bfloat16'),
    resume=NUMERICS,
  )
  remat: bool = option(
    False, "recompute the network's large blocks in the backward pass (less memory)", resume=FREE
  )
  bn_momentum: float = option(
    0.9,
    'BatchNorm running statistics: new = m * old + (1 - m) * batch',
    interval='[0, 1]',
    resume=NUMERICS,
  )
  bn_epsilon: float = option(
    1e-5, 'BatchNorm: added to the variance', interval='(0, inf)', resume=NUMERICS
  )

  # Option values that leave out the outputs only training reads (side heads), for the
  # export; empty for a network without any.
  TRAINING_ONLY: ClassVar[Mapping[str, Any]] = {}

  @abc.abstractmethod
  def input_multiple(self) -> int:
    """The input's sides must be multiples of this (the network's total downsampling)."""

  def has_ec_blocks(self) -> bool:
    """Whether the network has EC blocks to fold into single convs for inference."""
    return False

  def check(self) -> None:  # noqa: B027 (a network without constraints keeps this one)
    """Constraints between options, raising ConfigError naming config.model.<key>."""


@dataclasses.dataclass(frozen=True)
class Preset:
  """A named setting of a network (a `:variant=NAME`): what it is, where the paper reports
  it, the options it changes from the network's defaults, and config.loss changes."""

  about: str
  paper: str
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  loss: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Network:
  """A registry entry (registry.py): the options dataclass, the presets by variant name,
  and the Flax module as 'package.module:Class', imported only when the network is built."""

  options: type[Options]
  presets: Mapping[str, Preset]
  module: str


def fields(cls: type[Options]) -> dict[str, dataclasses.Field]:
  return {f.name: f for f in dataclasses.fields(cls)}


def _describe_type(kind: Any) -> str:
  origin = typing.get_origin(kind)
  if origin in (typing.Union, types.UnionType):
    return ' or '.join(_describe_type(k) for k in typing.get_args(kind))
  if origin is tuple:
    return f'a tuple of {_describe_type(typing.get_args(kind)[0])}s'
  return {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string'}[kind]


def _conforms(value: Any, kind: Any) -> bool:
  origin = typing.get_origin(kind)
  if origin in (typing.Union, types.UnionType):
    return any(_conforms(value, k) for k in typing.get_args(kind))
  if origin is tuple:
    item = typing.get_args(kind)[0]
    return isinstance(value, (tuple, list)) and all(_conforms(v, item) for v in value)
  if kind is bool:
    return isinstance(value, bool)
  if kind is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if kind is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  return isinstance(value, kind)


def in_interval(value: float, interval: str) -> bool:
  """Whether `value` lies in '[lo, hi)' ('[' / ']' include the end, '(' / ')' do not)."""
  low, high = (float(v) for v in interval[1:-1].split(','))
  above = value >= low if interval[0] == '[' else value > low
  below = value <= high if interval[-1] == ']' else value < high
  return above and below


def check_value(name: str, field: dataclasses.Field, value: Any) -> None:
  """ConfigError naming config.model.<name> unless `value` has the field's type and range."""
  meta = field.metadata
  if not _conforms(value, field.type):
    raise ConfigError(f'config.model.{name}={value!r}; expected {_describe_type(field.type)}')
  if meta['choices'] is not None and value not in meta['choices']:
    raise ConfigError(f'config.model.{name}={value!r}; expected one of {list(meta["choices"])}')
  interval = meta['interval']
  if interval is not None and not in_interval(value, interval):
    raise ConfigError(f'config.model.{name}={value!r}; expected a number in {interval}')


def _plain(value: Any, kind: Any) -> Any:
  """A value as the dataclass holds it: sequences as tuples (config.json stores lists)."""
  return tuple(value) if typing.get_origin(kind) is tuple else value


def from_config(cls: type[Options], model: ml_collections.ConfigDict | Mapping, network: str):
  """The options `model` (config.model) sets for the network `network`, checked: a key that
  is not an option of it or a value it cannot take raises ConfigError naming the key."""
  declared = fields(cls)
  given = {k: v for k, v in dict(model).items() if k not in NOT_OPTIONS}
  unknown = sorted(set(given) - set(declared))
  if unknown:
    raise ConfigError(
      f'config.model.{unknown[0]} is not an option of the network {network!r}; its options '
      f'are {sorted(declared)}'
    )
  missing = sorted(set(declared) - set(given))
  if missing:
    raise ConfigError(
      f'config.model.{missing[0]} is missing: a config derives from configs/default.py, whose '
      'variant sets every option of its network with its default'
    )
  for name, field in declared.items():
    check_value(name, field, given[name])
  options = cls(**{name: _plain(given[name], field.type) for name, field in declared.items()})
  options.check()
  return options


def _config_field(value: Any, kind: Any) -> Any:
  """A ConfigDict field for an option: one of several types (a union) as an object field,
  so that a command-line override may give any of them."""
  if typing.get_origin(kind) in (typing.Union, types.UnionType):
    return config_dict.FieldReference(value, field_type=object)
  return value


def config_section(network: str, variant: str, options: Options) -> ml_collections.ConfigDict:
  """config.model for `options`: the network's name, the variant's, then every option."""
  section = ml_collections.ConfigDict()
  section.name = network
  section.variant = variant
  for name, field in fields(type(options)).items():
    section[name] = _config_field(getattr(options, name), field.type)
  return section


def _allowed(field: dataclasses.Field) -> str:
  meta = field.metadata
  if meta['choices'] is not None:
    return ', '.join(f'`{c!r}`' for c in meta['choices'])
  interval = meta['interval']
  if interval is not None and field.type is int and interval.endswith(', inf)'):
    return f'an integer >= {interval[1:-1].split(",")[0]}'
  if interval is not None:
    return f'a number in {interval}'
  return _describe_type(field.type)


def markdown_table(cls: type[Options]) -> str:
  """The options of `cls` as a Markdown table (the docs pages embed it)."""
  lines = [
    '| option | default | allowed | on resume | what it does |',
    '|---|---|---|---|---|',
  ]
  for name, field in fields(cls).items():
    default = field.default
    lines.append(
      f'| `model.{name}` | `{default!r}` | {_allowed(field)} | {field.metadata["resume"]} | '
      f'{field.metadata["doc"]} |'
    )
  return '\n'.join(lines)
