"""KiTS19: 210 labelled contrast-enhanced CT volumes of kidneys and kidney tumours.

  python -m ecam_jax.main --config=configs/kits.py --workdir=runs/kits \
      --config.data.root=/data/kits19/data

Layout kits19 (case_00000/imaging.nii.gz + segmentation.nii.gz; axial is the first
array axis there, which the reorientation handles). Kidney and tumour (1, 2) are
foreground; split 170/10/30 as in the paper; weight decay 1e-4. Predicted masks keep their
two largest 3-D components (the kidneys; tumours lie inside them).
"""

from ecam_jax.configuration import sibling_config


def get_config(arg: str | None = None):
  config = sibling_config(__file__, 'default.py', arg)
  data = config.data
  data.source = (
    'Clone https://github.com/neheller/kits19 and run its get_imaging.py to download the '
    'volumes; pass its data/ folder (case_00000/imaging.nii.gz, segmentation.nii.gz, ...) '
    'as --config.data.root (layout kits19).'
  )
  data.layout = 'kits19'
  data.dataset = 'kits19'
  data.modality = 'CT'
  data.label_values = (0, 1, 2)
  data.foreground_labels = (1, 2)
  # With --config.data.merge_foreground=False: kidney and tumour apart, and KiTS19's
  # "kidney and tumour" region scored too (the paper merges them into one foreground).
  data.classes = 'kidney:1,tumour:2'
  data.regions = 'kidney_and_tumour:1+2'
  data.hu_window = (-79.0, 304.0)  # soft tissue and contrast-enhanced kidney
  data.image_size = 512
  if config.recipe == 'paper':  # the paper's weight decay for this dataset
    config.train.weight_decay = 1e-4
  config.eval.keep_components = 2  # two kidneys: keeping only the largest deletes one
  return config
