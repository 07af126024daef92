"""Every network, by the name `config.model.name` gives it: one line each.

A line names the network's entry in its `<network>_options.py` (its options, its presets
and where its Flax module is). Variant names (`:variant=NAME` after a config file) are the
presets' names, unique over all networks. Nothing here imports jax: configs use it.
"""

import dataclasses
import importlib
from typing import Any

import ml_collections

from ecam_jax.errors import ConfigError
from ecam_jax.models import options, unet_options
from ecam_jax.models.baselines import (
  attention_unet_options,
  cenet_options,
  danet_options,
  deeplabv3plus_options,
  hrnet_options,
  msunet_options,
  nnunet2d_options,
  segformer_options,
  unetpp_options,
)

NETWORKS: dict[str, options.Network] = {
  'ecam_unet': unet_options.NETWORK,
  'attention_unet': attention_unet_options.NETWORK,
  'msunet': msunet_options.NETWORK,
  'unetpp': unetpp_options.NETWORK,
  'cenet': cenet_options.NETWORK,
  'deeplabv3plus': deeplabv3plus_options.NETWORK,
  'danet': danet_options.NETWORK,
  'hrnet': hrnet_options.NETWORK,
  'segformer': segformer_options.NETWORK,
  'nnunet2d': nnunet2d_options.NETWORK,
}


def _variants() -> dict[str, tuple[str, options.Preset]]:
  found: dict[str, tuple[str, options.Preset]] = {}
  for network, entry in NETWORKS.items():
    for variant, preset in entry.presets.items():
      if variant in found:
        raise ValueError(f'variant {variant!r} is a preset of {found[variant][0]} and {network}')
      found[variant] = (network, preset)
  return found


# variant name -> (network name, its preset)
VARIANTS = _variants()


def network(name: str) -> options.Network:
  if name not in NETWORKS:
    raise ConfigError(f'config.model.name={name!r}; expected one of {sorted(NETWORKS)}')
  return NETWORKS[name]


def apply_variant(config: ml_collections.ConfigDict, variant: str) -> None:
  """Makes config.model the network of `variant` with the preset's options (every option of
  that network, nothing else), and applies the preset's config.loss changes."""
  if variant not in VARIANTS:
    raise ConfigError(f'variant={variant!r} is not known; expected one of {sorted(VARIANTS)}')
  name, preset = VARIANTS[variant]
  defaults = NETWORKS[name].options()
  unknown = sorted(set(preset.options) - set(options.fields(type(defaults))))
  if unknown:
    raise ValueError(f'preset {variant!r} sets {unknown}, not options of {name}')
  chosen = dataclasses.replace(defaults, **preset.options)
  config.model = options.config_section(name, variant, chosen)
  config.loss.update(dict(preset.loss))


def changed_options(model: ml_collections.ConfigDict) -> dict[str, Any]:
  """The options config.model sets to other values than its variant's preset does (what a
  config file or the command line changed), to carry them over to another variant."""
  network_name, preset = VARIANTS[model['variant']]
  preset_values = dataclasses.replace(NETWORKS[network_name].options(), **preset.options)
  return {
    name: model[name]
    for name in options.fields(type(preset_values))
    if model[name] != getattr(preset_values, name)
  }


def options_of(model: ml_collections.ConfigDict | dict) -> options.Options:
  """config.model's options, checked against its network's declaration (ConfigError naming
  the key otherwise). A config whose model.name was changed without its variant is told how
  to choose a network."""
  entry = network(model['name'])
  variant = model.get('variant', '')
  if variant in VARIANTS and VARIANTS[variant][0] != model['name']:
    raise ConfigError(
      f'config.model.name={model["name"]!r}, but config.model holds the options of variant '
      f'{variant!r} (network {VARIANTS[variant][0]!r}); choose a network by its variant: '
      f'--config=CONFIG_FILE:variant={model["name"]} (the variants: {sorted(VARIANTS)})'
    )
  return options.from_config(entry.options, model, model['name'])


def network_class(name: str) -> Any:
  """The Flax module class of network `name` (imports it, and jax)."""
  module, _, cls = network(name).module.partition(':')
  return getattr(importlib.import_module(module), cls)
