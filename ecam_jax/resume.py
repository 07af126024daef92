"""What a resumed run may change, and where in the data stream it continues.

A latest checkpoint records the resolved config it was trained with. Rerunning the same
command resumes; a rerun whose config differs is refused, naming each changed key, unless
the user says `--resume_with_changes` (train_and_evaluate's `allow_changes`):
- keys in FREE never change what is computed (logging, checkpoint cadence, reader
  workers, the attention implementation, ...): they may differ at any resume;
- keys under ARCHITECTURE decide the parameter tree: a checkpoint cannot continue as
  another network, so they are refused even with the override;
- every other key (schedule, batch size, loss, augmentation, preprocessing, seed) changes
  the training trajectory: allowed with the override, and then the run follows the new
  values from the step it resumes at (a longer `train.epochs` continues the cosine schedule
  that the new length states; a new `train.batch_size` keeps the fraction of the epoch that
  was done).

The data position is the index of the next global batch in the training stream
(pipeline.py); it equals the optimizer step unless a resume changed the batch size.
"""

import json
from typing import Any

import ml_collections

from ecam_jax.errors import ConfigError

# Keys that never change the trajectory (dotted paths; a section name covers its keys).
FREE = (
  'data.root',  # the same cases are guaranteed by the cache fingerprint and splits.json
  'data.source',
  'data.cache_dir',
  'data.num_workers',
  'data.prefetch_batches',
  'data.prepare_workers',
  'model.attention_impl',  # the same function, computed another way
  'model.attention_chunk',
  'model.remat',
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
# Keys that decide the parameter tree (everything under model except FREE and these).
NUMERICS_ONLY = ('model.dtype', 'model.bn_momentum', 'model.bn_epsilon', 'model.variant')
# Keys added after checkpoints recorded their config, with the value that computes what
# the code did before the key existed: a checkpoint whose config lacks one of them was
# trained that way, so the key is unchanged while it keeps this value.
LATER_KEYS = {
  'data.merge_foreground': True,
  'data.classes': '',
  'data.regions': '',
  'data.phantom_lesion_prob': 0.5,
  'data.phantom_lesion_scale': 1.0,
  'data.phantom_lesion_drop_hu': 35.0,
  'loss.class_weights': None,
  'train.best_by': 'mean',
  'model.msunet_small_kernel': 3,
  'model.msunet_large_kernel': 7,
  'model.deep_supervision': True,
  'model.unetpp_align_corners': True,
  'model.resnet_depth': 34,
  'model.output_stride': 16,
  'model.dropout': 0.1,
  'model.hrnet_size': 'full',
  'model.segformer_size': 'b2',
  'model.drop_path': 0.1,
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


def is_architecture(key: str) -> bool:
  return key.startswith('model.') and not _matches(key, FREE + NUMERICS_ONLY)


def changes(saved: dict[str, Any], current: ml_collections.ConfigDict) -> list[tuple]:
  """(key, saved value, current value) for every key that differs, FREE keys left out; a
  LATER_KEYS key the saved config lacks counts as its value before it existed."""
  old, new = flatten(saved), flatten(current)
  old = {**{k: v for k, v in LATER_KEYS.items() if k in new}, **old}
  missing = object()
  return [
    (key, old.get(key, missing), new.get(key, missing))
    for key in sorted(set(old) | set(new))
    if old.get(key, missing) != new.get(key, missing) and not _matches(key, FREE)
  ]


def _describe(diff: list[tuple]) -> str:
  show = lambda v: '(absent)' if not isinstance(v, (str, int, float, list, bool, type(None))) else v
  return '; '.join(f'{k}: {show(a)!r} then, {show(b)!r} now' for k, a, b in diff)


def check(saved: dict[str, Any] | None, config: ml_collections.ConfigDict, where: str, allow: bool):
  """The config changes a resume makes; raises ConfigError (naming each key) for a change
  that needs `allow`, or that no resume can make. `saved`: the checkpoint's config."""
  if saved is None:
    return []
  diff = changes(saved, config)
  architecture = [d for d in diff if is_architecture(d[0])]
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
