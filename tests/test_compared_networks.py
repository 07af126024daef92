"""Each compared network of Table I trains on the phantom demo (slow: minutes each on 2
cores; the default run covers each one's step and prediction mechanics in its own test
module). Prints the best validation DSC, for the README's table."""

import json
import time

import pytest

from ecam_jax import train
from ecam_jax.configuration import load_config
from ecam_jax.models import registry


@pytest.mark.slow
@pytest.mark.parametrize(
  'variant', sorted(v for v, (network, _) in registry.VARIANTS.items() if network != 'ecam_unet')
)
def test_trains_on_the_phantom_demo(variant, tmp_path):
  """configs/demo.py (base 16, 128x128) for 300 steps."""
  config = load_config('configs/demo.py', f'variant={variant}')
  config.train.epochs = 4
  config.train.max_steps = 300
  start = time.monotonic()
  summary = train.train_and_evaluate(config, tmp_path / 'run')
  records = [json.loads(x) for x in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  dsc = [r['dsc'] for r in records if r['kind'] == 'val']
  print(
    f'{variant} demo: {summary["step"]} steps in {time.monotonic() - start:.0f} s, '
    f'validation DSC per evaluation {[round(d, 3) for d in dsc]}'
  )
  assert max(dsc) > 0.5, dsc
