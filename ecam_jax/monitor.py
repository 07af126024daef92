"""What a user watches during training, written by process 0 only: a progress bar,
WORKDIR/metrics.jsonl (one JSON object per log step and per evaluation) and TensorBoard
event files in WORKDIR/tensorboard (written by tensorboardX, which needs no TensorFlow)."""

import errno
import itertools
import json
import math
import os
import pathlib
import time
from typing import Any

import jax
import tensorboardX
import tqdm

# tensorboardX writes events from a background thread and flushes its file at most this
# often, so a value logged by `Monitor.write` is on disk (and in TensorBoard) within about
# this many seconds; a shorter time costs one more fsync per interval, off the training thread.
FLUSH_SECONDS = 1

# Numbers the event files of this process apart: tensorboardX names a file by the second it
# was opened and the host, and opens it for writing, so two writers started in the same second
# (a quick rerun, a test) would otherwise truncate each other's file.
_writer_numbers = itertools.count()


class Monitor:
  """Progress bar + metrics.jsonl + TensorBoard; silent on processes other than 0.

  A run resumed at `start_step` > 0 tells TensorBoard to hide what an earlier run logged
  after that step (steps the killed run took past its last checkpoint, which this run takes
  again), so each curve stays one line. metrics.jsonl keeps every record it was given."""

  def __init__(
    self, workdir: pathlib.Path, total_steps: int, start_step: int, enabled: bool | None = None
  ):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = pathlib.Path(workdir) / 'metrics.jsonl'
    self._bar = None
    self._writer = None
    if self.enabled:
      self._writer = tensorboardX.SummaryWriter(
        str(pathlib.Path(workdir) / 'tensorboard'),
        purge_step=start_step + 1 if start_step > 0 else None,
        flush_secs=FLUSH_SECONDS,
        filename_suffix=f'.{os.getpid()}.{next(_writer_numbers)}',
      )
      self._bar = tqdm.tqdm(
        total=total_steps, initial=start_step, unit='step', dynamic_ncols=True, smoothing=0.1
      )

  def write(self, step: int, kind: str, values: dict[str, Any]) -> None:
    """One record: a line in metrics.jsonl (flushed before returning) and a TensorBoard
    scalar `kind/key` per numeric value (on disk within `FLUSH_SECONDS`)."""
    if not self.enabled:
      return
    record = {'step': step, 'kind': kind, 'time': round(time.time(), 3)}
    record.update({k: _plain(v) for k, v in values.items()})
    try:
      with open(self.path, 'a', encoding='utf-8') as f:
        f.write(json.dumps(record) + '\n')
    except OSError as e:
      why = 'the disk is full' if e.errno == errno.ENOSPC else str(e)
      raise OSError(e.errno, f'could not append to {self.path}: {why}') from e
    for key, value in record.items():
      if key not in ('step', 'time') and isinstance(value, (int, float)):
        self._writer.add_scalar(f'{kind}/{key}', value, step, walltime=record['time'])

  def progress(self, step: int, values: dict[str, float]) -> None:
    """Moves the bar to `step` and shows loss and lr (tqdm shows steps/s and ETA)."""
    if not self.enabled:
      return
    self._bar.update(step - self._bar.n)
    self._bar.set_postfix(
      {k: f'{v:.4g}' for k, v in values.items() if k in ('loss', 'lr', 'dsc')}, refresh=False
    )

  def note(self, text: str) -> None:
    """Prints a line above the progress bar (process 0 only)."""
    if self.enabled:
      (self._bar.write if self._bar else print)(text)

  def close(self) -> None:
    """Writes every pending event to disk and closes the bar and the event file; closing
    twice is harmless."""
    if self.enabled:
      self._bar.close()
      self._writer.close()


def _plain(value: Any) -> Any:
  """JSON-safe scalars: arrays to Python numbers; NaN/inf to None (strict JSON)."""
  if hasattr(value, 'item'):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value
