"""Config keys of earlier versions: how a stored config is read today, and what a command
line that uses a former name is told.

Until 2026-12, `config.model` held every network's options side by side, with a network's
name in some of them (`model.hrnet_size`). Now it holds the chosen network's options only,
under their own names (`model.size`). A checkpoint's stored config in the old layout is
read by `upgrade`: renamed options take their new names, and the options of networks other
than the stored one (which that network never read) are dropped. An option missing from a
stored config counts as its declared default, which computes what the network computed
before the option existed (the rule for adding an option, docs/adding-a-model.md).
`data.fold` was an integer (the fold of a user's splits_final.json, 0 by default, read
only with `data.splits_file`); it is a string now ('', a fold number, or 'all').
No jax here.
"""

from typing import Any

from ecam_jax.models import options, registry

# former flat key -> (the network that read it, its key now)
RENAMED = {
  'model.msunet_small_kernel': ('msunet', 'model.small_kernel'),
  'model.msunet_large_kernel': ('msunet', 'model.large_kernel'),
  'model.unetpp_align_corners': ('unetpp', 'model.align_corners'),
  'model.hrnet_size': ('hrnet', 'model.size'),
  'model.segformer_size': ('segformer', 'model.size'),
}


def upgrade(flat: dict[str, Any]) -> dict[str, Any]:
  """A flattened stored config ({'model.use_cc': ...}) in today's layout: config.model as
  its network's name, variant and options (missing ones at their defaults)."""
  flat = dict(flat)
  if isinstance(flat.get('data.fold'), int):  # until 2026-12: the fold of a splits file
    flat['data.fold'] = str(flat['data.fold']) if flat.get('data.splits_file') else ''
  name = flat.get('model.name')
  if name not in registry.NETWORKS:
    return flat  # an unknown network: the config check names it
  declared = options.fields(registry.NETWORKS[name].options)
  out = {k: v for k, v in flat.items() if not k.startswith('model.')}
  for key, value in flat.items():
    if not key.startswith('model.'):
      continue
    network, new = RENAMED.get(key, (name, key))
    field = new.removeprefix('model.')
    if network == name and (field in declared or field in options.NOT_OPTIONS):
      out[new] = value
  for field, declaration in declared.items():
    default = declaration.default
    out.setdefault(f'model.{field}', list(default) if isinstance(default, tuple) else default)
  return out


def explain(key: str, model: dict[str, Any]) -> str:
  """Why `key` ('model.x') cannot be set on a config whose config.model is `model`: its new
  name, or that it is not an option of the network (listing the network's options)."""
  name = model.get('name')
  if key in RENAMED:
    network, new = RENAMED[key]
    where = '' if network == name else f', an option of {network} (--config=FILE:variant={network})'
    return f'config.{key} is now config.{new}{where}'
  field = key.removeprefix('model.')
  if key.startswith('model.') and name in registry.NETWORKS:
    declared = sorted(options.fields(registry.NETWORKS[name].options))
    owners = [n for n, e in registry.NETWORKS.items() if field in options.fields(e.options)]
    variants = [v for v, (n, _) in registry.VARIANTS.items() if n in owners]
    elsewhere = f'; it is an option of {owners} (--config=FILE:variant=one of {variants})'
    elsewhere = elsewhere if owners else ''
    return (
      f'config.{key} is not an option of the network {name!r} (its options: {declared}){elsewhere}'
    )
  return f'config.{key} is not a key of this config'
