"""Exclusive locks on folders shared by several runners: an `flock` on a lock file in the
folder, released by the kernel when the holder's process ends however it ends (a crash,
SIGKILL, a lost SLURM job), so a dead runner never holds a folder. The file says who holds
it (host, pid, time) for the reader.

Used for a table's row (one runner trains it; the others skip it) and for a cache folder
(one runner builds it; the others wait, then read it).

flock works on local disks and, on Linux, on NFSv4 (the client maps it to an NFS lock);
on NFSv3 mounted without lockd (`nolock`) it is local to each host and does not exclude
runners on other nodes.
"""

import contextlib
import fcntl
import json
import os
import pathlib
import socket
import time
from collections.abc import Callable, Iterator

LOCK_NAME = '.lock'


def _read(f) -> dict:
  f.seek(0)
  try:
    return json.loads(f.read() or '{}')
  except json.JSONDecodeError:
    return {}


def holder(folder: pathlib.Path, name: str = LOCK_NAME) -> dict | None:
  """Who holds the lock `name` of `folder` ({'host', 'pid', 'time'}), or None if nobody does."""
  path = pathlib.Path(folder) / name
  if not path.is_file():
    return None
  with open(path, 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return _read(f)
    fcntl.flock(f, fcntl.LOCK_UN)
  return None


@contextlib.contextmanager
def folder_lock(
  folder: pathlib.Path,
  name: str = LOCK_NAME,
  wait: Callable[[dict], None] | None = None,
) -> Iterator[bool]:
  """Yields True with the lock `name` of `folder` (created) held for the block. When another
  process holds it: without `wait`, yields False at once; with `wait`, calls wait(holder)
  once (to say whom it waits for) and blocks until the lock is free."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  with open(folder / name, 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      if wait is None:
        yield False
        return
      wait(_read(f))
      fcntl.flock(f, fcntl.LOCK_EX)
    try:
      f.seek(0)
      f.truncate()
      f.write(json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'time': time.time()}))
      f.flush()
      yield True
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
