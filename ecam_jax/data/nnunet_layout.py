"""nnU-Net v2's raw dataset folder: `imagesTr/{CASE}_{NNNN}{file_ending}`, one file per
channel NNNN = 0000, 0001, ..., and `labelsTr/{CASE}{file_ending}`; dataset.json declares
the channels, the labels, `numTraining` and `file_ending`.

nnU-Net keeps its test images in `imagesTs/`, usually without labels. A dataset that also
has `labelsTs/` has a labelled held-out test set: its cases (the labelled ones, in the
same naming) are read as held-out cases, which make the test split (splits.py) and never
enter training, validation or the folds.
"""

import pathlib

from ecam_jax.data.case_files import Case, channel_of, visible
from ecam_jax.data.dataset_json import Declared
from ecam_jax.errors import DataError

DESCRIPTION = (
  "nnU-Net v2's dataset.json (channel_names, labels, file_ending), imagesTr/"
  '{CASE}_{NNNN}{file_ending} per channel and labelsTr/{CASE}{file_ending} (a labelled '
  'test set in imagesTs/ and labelsTs/ is the held-out test split)'
)


def nnunet_cases(root: pathlib.Path, declared: Declared) -> list[Case]:
  """The training cases (imagesTr with labelsTr), then the held-out ones (imagesTs with
  labelsTs, when labelsTs/ exists). An image of imagesTr without a label, a label without
  images or a missing channel file is a DataError naming the case and the file; an image of
  imagesTs without a label is left out (nnU-Net's test images are usually unlabelled)."""
  images_dir, labels_dir = root / 'imagesTr', root / 'labelsTr'
  for folder in (images_dir, labels_dir):
    if not folder.is_dir():
      raise DataError(f'{folder} is missing; the nnunet layout expects {DESCRIPTION}')
  cases = _labelled(images_dir, labels_dir, declared, held_out=False)
  if declared.num_training is not None and declared.num_training != len(cases):
    raise DataError(
      f'{declared.path}: "numTraining" is {declared.num_training} but {labels_dir} holds '
      f'{len(cases)} labelled cases'
    )
  if (root / 'labelsTs').is_dir():
    cases += _labelled(root / 'imagesTs', root / 'labelsTs', declared, held_out=True)
  return cases


def _files(folder: pathlib.Path, ending: str) -> list[pathlib.Path]:
  if not folder.is_dir():
    return []
  return [p for p in folder.iterdir() if p.is_file() and visible(p) and p.name.endswith(ending)]


def _labelled(
  images_dir: pathlib.Path, labels_dir: pathlib.Path, declared: Declared, held_out: bool
) -> list[Case]:
  ending, channels = declared.file_ending, len(declared.channels)
  labels = {p.name[: -len(ending)]: p for p in _files(labels_dir, ending)}
  images: dict[str, dict[int, pathlib.Path]] = {}
  for p in _files(images_dir, ending):
    parsed = channel_of(p)
    if parsed is not None:
      images.setdefault(parsed[0], {})[parsed[1]] = p
  orphans = sorted(set(images) - set(labels))
  if orphans and not held_out:
    first = images[orphans[0]]
    raise DataError(
      f'case {orphans[0]!r}: {first[min(first)]} has no label file '
      f'{labels_dir / (orphans[0] + ending)}'
    )
  cases = []
  for case_id, label in sorted(labels.items()):
    files = images.get(case_id, {})
    for channel in range(channels):
      if channel not in files:
        raise DataError(
          f'case {case_id!r}: {images_dir / f"{case_id}_{channel:04d}{ending}"} is missing '
          f'({channels} channels: {list(declared.channels)} in {declared.path})'
        )
    extra = sorted(set(files) - set(range(channels)))
    if extra:
      raise DataError(
        f'case {case_id!r}: {files[extra[0]]} is channel {extra[0]}, but {declared.path} '
        f'declares {channels} channels'
      )
    cases.append(Case(case_id, tuple(files[c] for c in range(channels)), label, held_out))
  return cases
