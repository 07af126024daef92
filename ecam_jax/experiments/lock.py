"""One runner per row: an exclusive `flock` on ROW/.lock, released by the kernel when the
holder's process ends however it ends (a crash, SIGKILL, a lost SLURM job), so a dead
runner never holds a row. The file says who holds it (host, pid, time) for the reader.

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
from collections.abc import Iterator

LOCK_NAME = '.lock'


def holder(row_dir: pathlib.Path) -> dict | None:
  """Who holds the lock of `row_dir` ({'host', 'pid', 'time'}), or None if nobody does."""
  path = pathlib.Path(row_dir) / LOCK_NAME
  if not path.is_file():
    return None
  with open(path, 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      try:
        return json.loads(f.read() or '{}')
      except json.JSONDecodeError:
        return {}
    fcntl.flock(f, fcntl.LOCK_UN)
  return None


@contextlib.contextmanager
def row_lock(row_dir: pathlib.Path) -> Iterator[bool]:
  """Yields True with the row's lock held for the block, or False (at once) when another
  process holds it."""
  row_dir = pathlib.Path(row_dir)
  row_dir.mkdir(parents=True, exist_ok=True)
  with open(row_dir / LOCK_NAME, 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      yield False
      return
    try:
      f.seek(0)
      f.truncate()
      f.write(json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'time': time.time()}))
      f.flush()
      yield True
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
