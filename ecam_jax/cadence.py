"""Where a training run stands, and the one rule for "every N steps or epochs".

The optimizer step counts updates; the data position counts global batches read. They are
equal unless a resume changed the batch size (resume.data_batch keeps the fraction of the
epochs done), so `offset` = position - step. The schedule spans `total_steps`; this
invocation stops at `last_step` (train.max_steps can stop it earlier).
"""

import dataclasses
from typing import Any

from ecam_jax import resume


@dataclasses.dataclass(frozen=True)
class Cadence:
  steps_per_epoch: int
  offset: int
  total_steps: int
  last_step: int

  @classmethod
  def of(cls, train_config, steps_per_epoch: int, start_step: int, meta: dict[str, Any] | None):
    """The run resumed at `start_step` from a checkpoint with metadata `meta` (None: a new
    run), for config.train `train_config`."""
    offset = resume.data_batch(meta, steps_per_epoch) - start_step
    total = steps_per_epoch * train_config.epochs - offset
    return cls(steps_per_epoch, offset, total, min(total, train_config.max_steps or total))

  def position(self, step: int) -> int:
    """Global batches of the data stream read after optimizer step `step`."""
    return step + self.offset

  def epoch(self, step: int) -> int:
    """Epochs completed after step `step`."""
    return self.position(step) // self.steps_per_epoch

  def epoch_end(self, step: int) -> bool:
    return self.position(step) % self.steps_per_epoch == 0

  def due(self, step: int, *, steps: int = 0, epochs: int = 0) -> bool:
    """Whether something done "every `steps` steps" or "every `epochs` epochs" is due after
    step `step`: at each multiple of `steps` and at this invocation's last step; at the end
    of each multiple of `epochs` epochs and of the schedule's last epoch."""
    by_steps = steps > 0 and (step % steps == 0 or step == self.last_step)
    by_epochs = (
      epochs > 0
      and self.epoch_end(step)
      and (self.epoch(step) % epochs == 0 or step == self.total_steps)
    )
    return by_steps or by_epochs
