"""Reading `get_config(arg)` arguments, loading config files, and checking configs.

A config a user wrote by hand or overrode on the command line is checked here, once,
before anything is built, so that a wrong key fails with a message naming it.
"""

import importlib.util
import pathlib
from types import ModuleType
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


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


def sibling_config(this_file: str, name: str, arg: str | None = None):
  """Loads configs/NAME next to `this_file`: how dataset configs derive from default.py."""
  return load_config(pathlib.Path(this_file).with_name(name), arg)


def _choice(config, key: str, allowed) -> None:
  section, field = key.split('.')
  value = config[section][field]
  if value not in allowed:
    raise ConfigError(f'config.{key}={value!r}; expected one of {list(allowed)}')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first key whose value cannot work."""
  m = config.model
  _choice(config, 'model.attention', ('coa', 'se', 'cbam', 'none'))
  _choice(config, 'model.fusion', ('conv', 'add', 'serial'))
  _choice(config, 'model.attention_impl', ('fused', 'chunked', 'naive'))
  _choice(config, 'model.dtype', ('float32', 'bfloat16'))
  _choice(config, 'data.layout', ('msd', 'kits19', 'paired'))
  _choice(config, 'data.modality', ('CT', 'MR'))
  _choice(config, 'train.schedule', ('cosine', 'constant'))
  _choice(config, 'train.nonfinite', ('stop', 'skip'))
  if m.attention == 'coa' and not (m.use_cc or m.use_sc):
    raise ConfigError("config.model.attention='coa' needs use_cc or use_sc (or both)")
  if m.attention != 'coa' and (m.use_cc or m.use_sc):
    raise ConfigError(
      f"config.model.use_cc/use_sc are parts of CoA; they need attention='coa', not {m.attention!r}"
    )
  scale = m.attention_scale
  if not (scale == 'rsqrt' or (isinstance(scale, (int, float)) and scale > 0)):
    raise ConfigError(f"config.model.attention_scale={scale!r}; expected a number > 0 or 'rsqrt'")
  for name in m.side_outputs:
    if name not in ('bottleneck', 'decoder1', 'decoder2', 'decoder3'):
      raise ConfigError(
        f'config.model.side_outputs has {name!r}; expected bottleneck or decoder1..decoder3'
      )
  for key in ('base_channels', 'num_classes', 'cc_hidden', 'reduction'):
    if m[key] < 1:
      raise ConfigError(f'config.model.{key}={m[key]}; expected an integer >= 1')
  if config.data.image_size % 16:
    raise ConfigError(
      f'config.data.image_size={config.data.image_size}; a depth-5 U-Net needs a multiple of 16'
    )
  if config.train.batch_size < 1:
    raise ConfigError(f'config.train.batch_size={config.train.batch_size}; expected >= 1')
