"""Training recipes: named presets of the loss, optimizer, schedule, sampling and
augmentation keys, chosen like a variant (`--config=configs/msd.py:recipe=nnunet`, or
`:variant=nnunet2d,recipe=nnunet`), so that a table can tell the network from the recipe.

`paper` is Xu et al.'s (Section IV-C; every default of configs/default.py). `nnunet` is
nnU-Net v2's (nnUNetTrainer): SGD with Nesterov momentum 0.99, lr 1e-2 decayed by
(1 - epoch / epochs) ** 0.9, weight decay 3e-5, gradients clipped to norm 12, soft Dice
(smooth 1e-5, foreground classes only) + cross-entropy with nnU-Net's deep-supervision
weights, a third of every batch drawn from foreground slices, and nnU-Net's 2-D
augmentation. A recipe sets only these keys; the training budget (epochs, batch size) stays
the config's, and a key given on the command line overrides the recipe's value. No jax here.
"""

import dataclasses
from typing import Any

import ml_collections

from ecam_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Recipe:
  description: str
  changes: tuple[tuple[str, Any], ...]  # ('section.key', value) over configs/default.py


RECIPES = {
  'paper': Recipe(
    "the paper's: Adam lr 1e-5, cosine to 0, L2 1e-4, Dice + BCE (eq. 11-13), flips, "
    'rotations and blur',
    (),
  ),
  'nnunet': Recipe(
    "nnU-Net v2's: SGD Nesterov 0.99, lr 1e-2 poly 0.9 per epoch, L2 3e-5, clip 12, Dice + "
    'CE with deep supervision, 1/3 foreground oversampling, its 2-D augmentation',
    (
      ('train.optimizer', 'sgd'),
      ('train.momentum', 0.99),
      ('train.nesterov', True),
      ('train.lr', 1e-2),
      ('train.schedule', 'poly'),
      ('train.poly_exponent', 0.9),
      ('train.warmup_steps', 0),
      ('train.weight_decay', 3e-5),
      ('train.decoupled_weight_decay', False),
      ('train.grad_clip_norm', 12.0),
      ('loss.w_dice', 1.0),
      ('loss.w_bce', 1.0),
      ('loss.alpha', None),
      ('loss.dice_smooth', 1e-5),
      ('loss.class_weights', None),
      ('loss.deep_supervision', 'nnunet'),
      ('data.foreground_oversample', 0.33),
      ('augment.pipeline', 'nnunet'),
    ),
  ),
}


def apply_recipe(config: ml_collections.ConfigDict, name: str) -> None:
  """Sets config.recipe = `name` and the recipe's keys."""
  if name not in RECIPES:
    raise ConfigError(f'recipe={name!r} is not known; expected one of {sorted(RECIPES)}')
  config.recipe = name
  for key, value in RECIPES[name].changes:
    section, field = key.split('.')
    config[section][field] = value
