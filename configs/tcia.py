"""NIH Pancreas-CT (TCIA): 82 contrast-enhanced abdominal CT volumes.

  python -m ecam_jax.main --config=configs/tcia.py --workdir=runs/tcia \
      --config.data.root=/data/Pancreas-CT-nifti

The archive is DICOM; convert it to NIfTI first (e.g. dcm2niix) and put images/ and
labels/ side by side with matching file names (layout paired; the labels come as
NIfTI from TCIA, renamed label0001.nii.gz -> PANCREAS_0001.nii.gz). Split 57/5/20 as in
the paper; weight decay 2e-4.
"""

from ecam_jax.configuration import sibling_config


def get_config(arg: str | None = None):
  config = sibling_config(__file__, 'default.py', arg)
  data = config.data
  data.source = (
    'Download Pancreas-CT from The Cancer Imaging Archive '
    '(https://www.cancerimagingarchive.net/collection/pancreas-ct/), convert the DICOM '
    'series to NIfTI (dcm2niix), and lay out images/PANCREAS_0001.nii.gz with '
    'labels/PANCREAS_0001.nii.gz (layout paired: same file names in both folders).'
  )
  data.layout = 'paired'
  data.dataset = 'tcia_pancreas'
  data.modality = 'CT'
  data.label_values = (0, 1)
  data.foreground_labels = (1,)
  data.classes = 'pancreas:1'  # its name in multi-class summaries (merge_foreground=False)
  data.hu_window = (-100.0, 240.0)
  data.image_size = 512
  if config.recipe == 'paper':  # the paper's weight decay for this dataset
    config.train.weight_decay = 2e-4
  return config
