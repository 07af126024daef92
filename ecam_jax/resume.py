"""What a resumed run may change, and where in the data stream it continues.

A latest checkpoint records the resolved config it was trained with. Rerunning the same
command resumes; a rerun whose config differs is refused, naming each changed key, unless
the user says `--resume_with_changes` (train_and_evaluate's `allow_changes`):
- keys in FREE never change what is computed (logging, checkpoint cadence, reader
  workers, ...): they may differ at any resume; so may the model options that each
  network declares FREE (the attention implementation, remat);
- the network (`model.name`) and its options declared ARCHITECTURE decide the parameter
  tree: a checkpoint cannot continue as another network, so they are refused even with the
  override (options declared NUMERICS, such as `model.dtype`, are not);
- every other key (schedule, batch size, loss, augmentation, preprocessing, seed) changes
  the training trajectory: allowed with the override, and then the run follows the new
  values from the step it resumes at (a longer `train.epochs` continues the cosine schedule
  that the new length states; a new `train.batch_size` keeps the fraction of the epoch that
  was done).

A stored config written before a key was renamed or added is read as today's
(`former_keys.upgrade`, and LATER_KEYS below).

The data position is the index of the next global batch in the training stream
(pipeline.py); it equals the optimizer step unless a resume changed the batch size.
"""

import json
from typing import Any

import ml_collections

from ecam_jax import former_keys
from ecam_jax.errors import ConfigError
from ecam_jax.models import options, registry

# Keys that never change the trajectory (dotted paths; a section name covers its keys).
FREE = (
  'data.root',  # the same cases are guaranteed by the cache fingerprint and splits.json
  'data.source',
  'data.cache_dir',
  'data.num_workers',
  'data.prefetch_batches',
  'data.prepare_workers',
  'data.ct_statistics',  # computed from the data with the cache, which the fingerprint checks
  'train.max_steps',  # where this invocation stops; the schedule spans train.epochs
  'train.log_every_steps',
  'train.eval_every_epochs',
  'train.checkpoint_every_steps',
  'train.checkpoint_every_seconds',
  'train.keep_checkpoints',
  'train.sync_every_steps',
  'train.nonfinite',
  'train.overlay_slices',
  'eval',
)
# Keys added after checkpoints recorded their config, with the value that computes what
# the code did before the key existed (or how to read it from the stored config): a
# checkpoint whose config lacks one of them was trained that way, so the key is unchanged
# while it keeps this value.
LATER_KEYS = {
  'data.channels': lambda old: [old['data.modality']],  # one channel, named by its modality
  'data.ct_normalization': 'window',
  'data.fold': '',
  'data.folds': 5,
  'data.merge_foreground': True,
  'data.classes': '',
  'data.regions': '',
  'data.phantom_lesion_prob': 0.5,
  'data.phantom_lesion_scale': 1.0,
  'data.phantom_lesion_drop_hu': 35.0,
  'loss.class_weights': None,
  'train.best_by': 'mean',
  'recipe': 'paper',
  'train.optimizer': 'adam',
  'train.momentum': 0.99,
  'train.nesterov': True,
  'train.poly_exponent': 0.9,
  'loss.deep_supervision': 'paper',
  'augment.pipeline': 'paper',
}


def flatten(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
  """{'a.b': value} of a config, as JSON would store it (tuples become lists)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = json.loads(config.to_json_best_effort())
  out = {}
  for key, value in config.items():
    if isinstance(value, dict):
      out.update({f'{key}.{k}': v for k, v in flatten(value).items()})
    else:
      out[key] = value
  return out


def _matches(key: str, names: tuple[str, ...]) -> bool:
  return any(key == n or key.startswith(n + '.') for n in names)


def model_kind(key: str, network: str) -> str:
  """How a resume may change `key` ('model.x') of `network` (a config.model.name):
  options.ARCHITECTURE, NUMERICS or FREE as the network declares the option; the network's
  name is architecture, the variant (a label) numerics."""
  field = key.removeprefix('model.')
  if field == 'variant':
    return options.NUMERICS
  declared = options.fields(registry.NETWORKS[network].options)
  return declared[field].metadata['resume'] if field in declared else options.ARCHITECTURE


def changes(saved: dict[str, Any], current: ml_collections.ConfigDict) -> list[tuple]:
  """(key, saved value, current value) for every key that differs and whose change is not
  FREE. The saved config is read in today's layout (`former_keys.upgrade`); a LATER_KEYS
  key it lacks counts as its value before it existed."""
  old, new = former_keys.upgrade(flatten(saved)), flatten(current)
  later = {k: v(old) if callable(v) else v for k, v in LATER_KEYS.items() if k in new}
  old = {**later, **old}
  network = new['model.name']
  missing = object()
  return [
    (key, old.get(key, missing), new.get(key, missing))
    for key in sorted(set(old) | set(new))
    if old.get(key, missing) != new.get(key, missing) and not _free(key, network)
  ]


def _free(key: str, network: str) -> bool:
  if key.startswith('model.'):
    return model_kind(key, network) == options.FREE
  return _matches(key, FREE)


def _describe(diff: list[tuple]) -> str:
  show = lambda v: '(absent)' if not isinstance(v, (str, int, float, list, bool, type(None))) else v
  return '; '.join(f'{k}: {show(a)!r} then, {show(b)!r} now' for k, a, b in diff)


def check(saved: dict[str, Any] | None, config: ml_collections.ConfigDict, where: str, allow: bool):
  """The config changes a resume makes; raises ConfigError (naming each key) for a change
  that needs `allow`, or that no resume can make. `saved`: the checkpoint's config."""
  if saved is None:
    return []
  diff = changes(saved, config)
  network = config.model.name
  architecture = [
    d
    for d in diff
    if d[0].startswith('model.') and model_kind(d[0], network) == options.ARCHITECTURE
  ]
  if architecture:
    raise ConfigError(
      f'{where} was trained as another network: {_describe(architecture)}. A checkpoint '
      'cannot continue as another architecture; use a new --workdir'
    )
  if diff and not allow:
    raise ConfigError(
      f'the config differs from the one {where} was trained with: {_describe(diff)}. '
      'Run with the same config to resume, pass --resume_with_changes to continue this run '
      'under the new values from where it stopped, or use a new --workdir'
    )
  return diff


def data_batch(meta: dict[str, Any] | None, steps_per_epoch: int) -> int:
  """The global batch the resumed stream starts at: the saved one, or with another batch
  size (fewer or more steps per epoch) the same fraction of the epochs done."""
  if meta is None:
    return 0
  done = int(meta.get('data_batch', meta['step']))
  saved_per_epoch = int(meta.get('steps_per_epoch', steps_per_epoch))
  if saved_per_epoch == steps_per_epoch:
    return done
  return round(done / saved_per_epoch * steps_per_epoch)
