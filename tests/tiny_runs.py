"""The tiny training run that the train and resume tests share: the plain U-Net at base 4
on 32x32 slices of a 3-case phantom (1/1/1 split). What those tests check does not depend
on the variant, and every run then shares one compiled program (JAX's compilation cache)."""

import pathlib

import jax

from ecam_jax import checkpoint, parallel
from ecam_jax.configuration import load_config
from ecam_jax.models import abstract_variables, build_model

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
