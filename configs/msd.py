"""MSD Pancreas (Medical Segmentation Decathlon, Task07_Pancreas): 281 CT volumes.

  python -m ecam_jax.main --config=configs/msd.py --workdir=runs/msd \
      --config.data.root=/data/Task07_Pancreas

Split 236/5/40 (train/val/test) as in the paper; pancreas and tumour (labels 1, 2) are
foreground; CT window [-100, 240] HU; weight decay 1e-4. `:variant=NAME` picks any
row of the paper's tables (README).
"""

from ecam_jax.configuration import sibling_config


def get_config(arg: str | None = None):
  config = sibling_config(__file__, 'default.py', arg)
  data = config.data
  data.source = (
    'Download Task07_Pancreas.tar from http://medicaldecathlon.com (or the AWS open '
    "data bucket 'msd-for-monai'), untar it and pass its folder as --config.data.root; "
    'it must hold dataset.json, imagesTr/ and labelsTr/ (layout msd).'
  )
  data.layout = 'msd'
  data.dataset = 'msd_pancreas'
  data.modality = 'CT'
  data.foreground_labels = (1, 2)
  # With --config.data.merge_foreground=False: pancreas and tumour apart (names from
  # dataset.json: pancreas, cancer), and the whole pancreas (both) scored as a region.
  data.regions = 'whole_pancreas:1+2'
  data.hu_window = (-100.0, 240.0)
  data.image_size = 512
  if config.recipe == 'paper':  # the paper's weight decay for this dataset
    config.train.weight_decay = 1e-4
  return config
