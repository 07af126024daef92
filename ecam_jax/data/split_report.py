"""What a run prints about its splits before training: each split's share of the
foreground, and warnings when training or validation hold too little of it.

A split that leaves training with little foreground trains a model that predicts none
(seen on an 8-case MR dataset whose one large foreground case landed in val), and a val
split with a few foreground slices picks the "best" checkpoint on noise. Neither stops the
run: the user is told which split holds what, and what to change.
"""

from collections.abc import Mapping

import ml_collections

from ecam_jax.data.cache import Amount
from ecam_jax.data.splits import SPLITS, Foreground, amounts_of

# Under this share of the foreground voxels, training is warned about.
MIN_TRAIN_SHARE = 0.5
# Under this many foreground slices in val, validation is warned about.
MIN_VAL_SLICES = 5
# Under this fraction of all voxels, the foreground is rare enough to suggest oversampling.
RARE_FOREGROUND = 0.01


def _held(ids: list[str], amounts: Mapping[str, Amount]) -> tuple[int, int, int]:
  """(cases with foreground, foreground voxels, foreground slices) of a split."""
  held = [amounts[c] for c in ids if c in amounts]
  return len(held), sum(a.voxels for a in held), sum(a.slices for a in held)


def describe(splits: dict[str, list[str]], foreground: Foreground) -> str:
  """One line: 'train 6 cases (1 with foreground: 91% of its voxels, 20 slices), val 1
  (1: 9%, 2 slices), test 1 (0: 0%, 0 slices)'."""
  amounts = amounts_of(foreground)
  total = max(1, sum(a.voxels for a in amounts.values()))
  parts = []
  for name in SPLITS:
    ids = splits.get(name, [])
    count, voxels, slices = _held(ids, amounts)
    share = f'{voxels / total:.0%}'
    if name == SPLITS[0]:
      parts.append(
        f'{name} {len(ids)} cases ({count} with foreground: {share} of its voxels, {slices} slices)'
      )
    else:
      parts.append(f'{name} {len(ids)} ({count}: {share}, {slices} slices)')
  return ', '.join(parts)


def warnings(
  splits: dict[str, list[str]],
  foreground: Foreground,
  data: ml_collections.ConfigDict,
  total_voxels: int,
) -> list[str]:
  """The lines to print under `describe`'s: training under MIN_TRAIN_SHARE of the foreground
  voxels, val under MIN_VAL_SLICES foreground slices, and a note suggesting
  data.foreground_oversample when the foreground is under RARE_FOREGROUND of all voxels."""
  amounts = amounts_of(foreground)
  lines = []
  total = sum(a.voxels for a in amounts.values())
  if total == 0:
    return ['warning: no case has foreground; every slice is background']
  count, voxels, slices = _held(splits['train'], amounts)
  all_slices = sum(a.slices for a in amounts.values())
  if voxels < MIN_TRAIN_SHARE * total:
    lines.append(
      f'warning: training holds {voxels / total:.0%} of the foreground voxels ({slices} of '
      f'{all_slices} foreground slices, in {count} of {len(amounts)} cases with foreground): '
      f'a model may learn to predict none. {_remedy(data)}'
    )
  val_slices = _held(splits['val'], amounts)[2]
  if data.fold == 'all':
    lines.append(
      'note: fold all validates on its training cases (as nnU-Net does): the best '
      'checkpoint is chosen on data it was trained on'
    )
  elif val_slices < MIN_VAL_SLICES:
    lines.append(
      f'warning: val holds {val_slices} foreground slices: the best checkpoint is chosen on '
      'little evidence; give val more foreground (see above), or judge by the final '
      'checkpoint (--checkpoint=latest)'
    )
  oversampled = data.foreground_only or data.foreground_oversample > 0
  if total < RARE_FOREGROUND * total_voxels and not oversampled:
    lines.append(
      f'note: the foreground is {total / total_voxels:.2%} of all voxels; '
      'config.data.foreground_oversample=0.33 draws a third of each epoch from foreground '
      "slices (nnU-Net's share; the paper's recipe leaves it at 0)"
    )
  return lines


def _remedy(data: ml_collections.ConfigDict) -> str:
  if data.splits_file:
    return f'config.data.splits_file ({data.splits_file}) assigns the cases so'
  if data.fold:
    return (
      f'In fold {data.fold}, val holds the cases with most of the foreground; with so few '
      'cases with foreground, some fold must'
    )
  return (
    'The split is served first and cannot do better with these cases: set '
    'config.data.split_sizes or a config.data.splits_file'
  )
