"""Where a volume's time goes on the host: seconds per named stage (read, preprocess,
model, restore, decide, components, write), summed over the volumes a Predictor segments.
The device normalizes, resizes, runs the model, resizes back and decides per batch
(volume_steps.py) while the host prepares the next batch ('preprocess'); 'model' is the
time the host waited for the device's results, so the device's work that the host's
overlapped is in neither. Predictor.device_seconds gives each device step's own time."""

import collections
import contextlib
import time
from collections.abc import Iterator

STAGES = ('read', 'preprocess', 'model', 'restore', 'decide', 'components', 'write')


class StageTimes:
  def __init__(self):
    self.seconds: dict[str, float] = collections.defaultdict(float)

  @contextlib.contextmanager
  def __call__(self, stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[stage] += time.perf_counter() - start

  def report(self) -> dict[str, float]:
    """{stage: seconds} in pipeline order (stages never entered left out), then 'total'."""
    out = {s: round(self.seconds[s], 4) for s in STAGES if s in self.seconds}
    out |= {s: round(v, 4) for s, v in self.seconds.items() if s not in STAGES}
    return out | {'total': round(sum(self.seconds.values()), 4)}

  def reset(self) -> None:
    self.seconds.clear()
