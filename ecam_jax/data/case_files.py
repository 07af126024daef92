"""A case and its files: nnU-Net's `{CASE}_{NNNN}` channel file names, NIfTI files in a
folder, and the cases to segment at a prediction's --input (a folder, or one file and its
channel siblings)."""

import dataclasses
import pathlib
import re

from ecam_jax.errors import DataError

NIFTI_SUFFIXES = ('.nii.gz', '.nii')


@dataclasses.dataclass(frozen=True)
class Case:
  """One case: its image files (one per channel, or one 4-D file holding every channel),
  its label (None where a dataset has no label for it), and whether the dataset holds it
  out for testing (nnU-Net's labelled imagesTs: the test split, never trained on)."""

  case_id: str
  images: tuple[pathlib.Path, ...]
  label: pathlib.Path | None
  held_out: bool = False

  @property
  def image(self) -> pathlib.Path:
    """The file of channel 0, whose grid the label and every prediction share."""
    return self.images[0]


def case_id_of(path: pathlib.Path) -> str:
  """The file name without its NIfTI suffix: `imagesTr/pancreas_001.nii.gz` -> pancreas_001."""
  for suffix in NIFTI_SUFFIXES:
    if path.name.endswith(suffix):
      return path.name[: -len(suffix)]
  return path.stem


CHANNEL_FILE = re.compile(r'^(?P<case>.+)_(?P<channel>\d{4})$')


def channel_of(path: pathlib.Path) -> tuple[str, int] | None:
  """(case id, channel) of nnU-Net's `{CASE}_{NNNN}` image file name, else None."""
  match = CHANNEL_FILE.match(case_id_of(path))
  return (match['case'], int(match['channel'])) if match else None


def visible(path: pathlib.Path) -> bool:
  """False for hidden files."""
  return not path.name.startswith('.')  # also drops macOS '._x.nii.gz' resource forks


def nifti_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """The .nii and .nii.gz files in `folder`, sorted by name; hidden files left out."""
  return sorted(
    p for p in folder.iterdir() if p.is_file() and visible(p) and p.name.endswith(NIFTI_SUFFIXES)
  )


def _grouped(files: list[pathlib.Path], channels: int, where: str) -> list[tuple[str, tuple]]:
  """(case id, its files) of NIfTI files: nnU-Net's {CASE}_{NNNN} channel files grouped by
  case when every file is named so, else one case per file (a 4-D file of every channel
  when the model takes several)."""
  named = [channel_of(p) for p in files]
  if not all(named):
    return [(case_id_of(p), (p,)) for p in files]
  groups: dict[str, dict[int, pathlib.Path]] = {}
  for path, (case, channel) in zip(files, named, strict=True):
    groups.setdefault(case, {})[channel] = path
  cases = []
  for case, found in sorted(groups.items()):
    if sorted(found) != list(range(channels)):
      raise DataError(
        f'--input {where}: case {case!r} has the channel files {sorted(found)}; the model '
        f'takes {channels}: expected {case}_0000 .. {case}_{channels - 1:04d}'
      )
    cases.append((case, tuple(found[c] for c in range(channels))))
  return cases


def cases_at(source: pathlib.Path, channels: int) -> list[tuple[str, tuple]]:
  """(case id, files) of the cases to segment at `source` (--input): a folder's cases, or
  one file's (its channel siblings {CASE}_0001, ... beside an nnU-Net {CASE}_0000 file
  when the model takes several)."""
  if source.is_dir():
    files = nifti_files(source)
    if not files:
      raise DataError(f'--input {source}: no .nii or .nii.gz files in this folder')
    return _grouped(files, channels, str(source))
  if not source.is_file():
    raise DataError(f'--input {source} does not exist')
  parsed = channel_of(source)
  if channels > 1 and parsed is not None:
    suffix = source.name[len(case_id_of(source)) :]
    files = [source.parent / f'{parsed[0]}_{c:04d}{suffix}' for c in range(channels)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
      raise DataError(
        f'--input {source}: the model takes {channels} channels; {missing[0]} is missing'
      )
    return [(parsed[0], tuple(files))]
  return [(parsed[0] if parsed else case_id_of(source), (source,))]
