"""MSD Heart (Task02_Heart): 20 MR volumes of the left atrium, 320x320 slices.

  python -m ecam_jax.main --config=configs/cardiac.py --workdir=runs/cardiac \
      --config.data.root=/data/Task02_Heart

MR: percentile clip and z-score per volume; left atrium (1) is foreground; split by
ratio (the paper gives no sizes); weight decay 2e-4; images 320x320.
"""

from ecam_jax.configuration import sibling_config


def get_config(arg: str | None = None):
  config = sibling_config(__file__, 'default.py', arg)
  data = config.data
  data.source = (
    'Download Task02_Heart.tar from http://medicaldecathlon.com, untar it and pass its '
    'folder as --config.data.root; it must hold dataset.json, imagesTr/ and labelsTr/ '
    '(layout msd).'
  )
  data.layout = 'msd'
  data.dataset = 'msd_heart'
  data.modality = 'MR'
  data.foreground_labels = (1,)
  data.image_size = 320
  data.split_ratios = (0.7, 0.1, 0.2)
  if config.recipe == 'paper':  # the paper's weight decay for this dataset
    config.train.weight_decay = 2e-4
  return config
