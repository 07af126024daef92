"""The tiny training run that the train and resume tests share: the plain U-Net at base 4
on 32x32 slices of a 3-case phantom (1/1/1 split). What those tests check does not depend
on the variant, and every run then shares one compiled program (JAX's compilation cache)."""

import json
import pathlib

import jax
import numpy as np

from ecam_jax import checkpoint, parallel
from ecam_jax.configuration import load_config
from ecam_jax.models.build import abstract_variables, build_model

ROOT = pathlib.Path(__file__).resolve().parents[1]


def config(root, **train):
  """configs/demo.py shrunk, on the data in `root`; `train` overrides config.train."""
  c = load_config(ROOT / 'configs/demo.py', 'variant=unet')
  c.data.root = str(root)
  c.data.phantom_cases = 0
  c.data.image_size = 32
  c.data.split_sizes = (1, 1, 1)
  c.data.prepare_workers = 1
  c.model.base_channels = 4
  c.train.batch_size = 8
  c.train.epochs = 2
  c.train.log_every_steps = 2
  c.train.warmup_steps = 0
  c.train.overlay_slices = 2
  c.train.update(train)
  return c


def variables(workdir, which='latest'):
  """(variables, meta) of a tiny run's 'latest' or 'best' checkpoint, on this process."""
  model = build_model(config('.').model)
  sharding = parallel.replicated(parallel.data_mesh(jax.local_devices()))
  target = parallel.abstract(abstract_variables(model, 32), sharding)
  return checkpoint.restore_variables(workdir, which, target)


def assert_binary_unchanged(workdir, name: str) -> None:
  """The run's metrics.jsonl (train and validation records, times aside) equals what the
  same run logged before multi-class support (tests/binary_golden.json, recorded at commit
  ee04f47): the paper's binary setting computes the same numbers. Equal to the last bit on
  the machine that recorded them; rtol 1e-6 allows another CPU's instruction set."""
  golden = json.loads((ROOT / 'tests' / 'binary_golden.json').read_text())[name]
  records = [
    json.loads(x) for x in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
  ]
  assert len(records) == len(golden)
  for record, expected in zip(records, golden, strict=True):
    record.pop('time')
    assert record.keys() == expected.keys(), (record, expected)
    for key, value in expected.items():
      if isinstance(value, float):
        np.testing.assert_allclose(record[key], value, rtol=1e-6, err_msg=f'{key} of {record}')
      else:
        assert record[key] == value, (key, record, expected)
