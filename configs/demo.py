"""The demo: a synthetic CT phantom (generated into the workdir when missing) and the
full EC-CaM-UNet at a size that trains on a laptop CPU in minutes.

  python -m ecam_jax.main --config=configs/demo.py --workdir=runs/demo

Everything else is the paper's recipe except what a few minutes demand: a small base
width, 128x128 slices, a larger learning rate and a few epochs. `:variant=NAME`
works as in default.py.
"""

from ecam_jax.configuration import sibling_config


def get_config(arg: str | None = None):
  config = sibling_config(__file__, 'default.py', arg)
  data = config.data
  data.phantom_cases = 12
  data.phantom_size = 256
  data.source = 'generated: the synthetic phantom (python -m ecam_jax.data.phantom)'
  data.layout = 'msd'
  data.dataset = 'phantom'
  data.modality = 'CT'
  data.foreground_labels = (1, 2)
  data.hu_window = (-160.0, 240.0)
  data.image_size = 128
  data.split_sizes = (8, 2, 2)
  data.prepare_workers = 2

  if 'base_channels' in config.model:  # every network but SegFormer (whose model.size sets it)
    config.model.base_channels = 16
  config.train.batch_size = 4
  config.train.epochs = 6
  if config.recipe == 'paper':  # the paper's Adam at lr 1e-5 would not learn in 6 epochs
    config.train.lr = 2e-3
    config.train.warmup_steps = 50
  config.train.log_every_steps = 20
  config.train.checkpoint_every_steps = 200
  config.eval.batch_size = 16
  return config
