"""Writes that never leave half a file: written under a temporary name in the same folder
and renamed into place, so a reader (or a resumed run) sees the whole file or nothing."""

import contextlib
import json
import os
import pathlib
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

TEMP_PREFIXES = ('.tmp-', '.old-')  # names of what an interrupted write may leave behind


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[pathlib.Path]:
  """Yields a temporary path next to `path` to write; renamed to `path` if the block succeeds.

  With directory=True the temporary path is a new folder, and an existing folder at `path`
  is replaced. On an exception the temporary file or folder is removed; a killed process
  leaves at most a hidden `.tmp-*` (or `.old-*`) entry, never a half-written `path`.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f'.tmp-{path.name}-{uuid.uuid4().hex[:8]}'
  if directory:
    tmp.mkdir()
  try:
    yield tmp
    if directory and path.is_dir():
      old = path.parent / f'.old-{path.name}-{uuid.uuid4().hex[:8]}'
      os.replace(path, old)
      os.replace(tmp, path)
      shutil.rmtree(old)
    else:
      os.replace(tmp, path)
  except BaseException:
    remove(tmp)
    raise


def remove(path: pathlib.Path) -> None:
  """Removes a file or a folder tree if it exists."""
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path)
  else:
    path.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
  """Writes `value` as JSON to `path`, complete or not at all."""
  with atomic_path(path) as tmp:
    tmp.write_text(json.dumps(value, indent=1))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path`, complete or not at all."""
  with atomic_path(path) as tmp:
    tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  """Writes `text` (UTF-8) to `path`, complete or not at all."""
  write_bytes_atomic(path, text.encode('utf-8'))
