"""MSD Prostate (Task05_Prostate): 32 MR volumes with two channels, T2 and ADC, and two
zones segmented apart, the peripheral (PZ, 1) and the transition zone (TZ, 2).

  python -m ecam_jax.main --config=configs/prostate.py --workdir=runs/prostate \
      --config.data.root=/data/Task05_Prostate

Not one of the paper's datasets: the multi-modal case of the Decathlon. Each case is one
4-D file [x, y, z, 2] (or, converted by nnU-Net, imagesTr/prostate_XX_0000 and _0001 with
the nnunet layout: the same config reads both); each channel is clipped at percentiles and
z-scored on its own. The two zones are two classes (K + 1 = 3 logits, softmax) and the
whole prostate is scored as a region. Split by ratio, 320x320 slices.
"""

from ecam_jax.configuration import sibling_config


def get_config(arg: str | None = None):
  config = sibling_config(__file__, 'default.py', arg)
  data = config.data
  data.source = (
    'Download Task05_Prostate.tar from http://medicaldecathlon.com, untar it and pass its '
    'folder as --config.data.root; it must hold dataset.json, imagesTr/ and labelsTr/ '
    '(layout msd; a folder converted to nnU-Net v2 raw format is read as layout nnunet).'
  )
  data.layout = 'msd'
  data.dataset = 'msd_prostate'
  data.merge_foreground = False
  data.classes = 'PZ:1,TZ:2'
  data.regions = 'whole_prostate:1+2'
  data.image_size = 320
  data.split_ratios = (0.7, 0.1, 0.2)
  if config.recipe == 'paper':  # the paper's weight decay for this dataset
    config.train.weight_decay = 1e-4
  return config
