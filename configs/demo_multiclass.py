"""The demo with two classes: the phantom's target (label 1) and the lesion inside it
(label 2), segmented and scored apart (README, "Several classes").

  python -m ecam_jax.main --config=configs/demo_multiclass.py --workdir=runs/demo_mc

As configs/demo.py, except: classes instead of one merged foreground (3 logits, softmax,
per-class Dice and cross-entropy; the names come from the phantom's dataset.json), a
lesion in every phantom case (so that every validation case can score it), and the
target and lesion together scored as a region. The best checkpoint is the one with the
best mean DSC of the two classes.
"""

from ecam_jax.configuration import sibling_config


def get_config(arg: str | None = None):
  config = sibling_config(__file__, 'demo.py', arg)
  config.data.merge_foreground = False
  config.data.regions = 'target_and_lesion:1+2'
  config.data.phantom_lesion_prob = 1.0
  config.data.phantom_lesion_scale = 2.0
  config.data.phantom_lesion_drop_hu = 60.0
  return config
