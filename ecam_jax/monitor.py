"""What a user watches during training, written by process 0 only: a progress bar,
WORKDIR/metrics.jsonl (one JSON object per log step and per evaluation) and TensorBoard
event files (no TensorFlow needed)."""

import errno
import json
import math
import pathlib
import time
from typing import Any

import jax
import tqdm

from ecam_jax.tensorboard import SummaryWriter


class Monitor:
  """Progress bar + metrics.jsonl + TensorBoard; silent on processes other than 0."""

  def __init__(self, workdir: pathlib.Path, total_steps: int, start_step: int, enabled=None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = pathlib.Path(workdir) / 'metrics.jsonl'
    self._bar = None
    self._writer = None
    if self.enabled:
      self._writer = SummaryWriter(pathlib.Path(workdir) / 'tensorboard')
      self._bar = tqdm.tqdm(
        total=total_steps, initial=start_step, unit='step', dynamic_ncols=True, smoothing=0.1
      )

  def write(self, step: int, kind: str, values: dict[str, Any]) -> None:
    """One record: a line in metrics.jsonl and a scalar per numeric value in TensorBoard."""
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
        self._writer.scalar(f'{kind}/{key}', value, step)
    self._writer.flush()

  def progress(self, step: int, values: dict[str, float]) -> None:
    """Moves the bar to `step` and shows loss and lr (tqdm shows steps/s and ETA)."""
    if not self.enabled:
      return
    self._bar.update(step - self._bar.n)
    self._bar.set_postfix(
      {k: f'{v:.4g}' for k, v in values.items() if k in ('loss', 'lr', 'dsc')}, refresh=False
    )

  def note(self, text: str) -> None:
    if self.enabled:
      (self._bar.write if self._bar else print)(text)

  def close(self) -> None:
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
