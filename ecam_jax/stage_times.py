"""Where a volume's time goes: seconds per named stage (read, preprocess, model, restore,
decide, components, write), summed over the volumes a Predictor segments. The model's
stage is measured when its results reach the host, so it holds the device's time that
the host waited for; host work done while the device runs is the host's stage's."""

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
