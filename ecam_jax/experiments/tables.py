"""The paper's tables as rows of ordinary training runs, in the paper's order.

A row is a variant of `ecam_jax.models.registry` (a preset of the U-Net or a compared network)
plus config overrides (Table IV's loss weights, Fig. 4's alpha). Plain data: no jax.
"""

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Row:
  """One row: `id` (its workdir name and its key in paper_results.json), `label` as the
  paper prints it, the `variant` it trains with the training `recipe` (ecam_jax/recipes.py)
  and `overrides` ('section.key' -> value) applied after both; `in_paper` False for a row
  this project adds to the paper's table."""

  id: str
  label: str
  variant: str
  overrides: tuple[tuple[str, Any], ...] = ()
  recipe: str = 'paper'
  in_paper: bool = True


@dataclasses.dataclass(frozen=True)
class Table:
  """A table: its `name` (the --table value), `title`, `rows`, the row every other row is
  compared with per case (`reference`), the metrics the paper prints and where it is."""

  name: str
  title: str
  rows: tuple[Row, ...]
  reference: str
  metrics: tuple[str, ...] = ('dsc', 'sensitivity', 'precision')

  def row(self, row_id: str) -> Row:
    for row in self.rows:
      if row.id == row_id:
        return row
    raise KeyError(row_id)


_OURS = Row('ec_cam_unet', 'EC-CaM-UNet (Ours)', 'ec_cam_unet')
_DICE_ONLY = (('loss.w_dice', 1.0), ('loss.w_bce', 0.0))

TABLES: dict[str, Table] = {
  '1': Table(
    '1',
    'Table I: EC-CaM-UNet and the compared networks',
    (
      Row('unet', 'U-Net', 'unet'),
      Row('unetpp', 'U-Net++', 'unetpp'),
      Row('deeplabv3plus', 'DeepLabV3+', 'deeplabv3plus'),
      Row('attention_unet', 'Attention U-Net', 'attention_unet'),
      Row('danet', 'DA-Net', 'danet'),
      Row('hrnet', 'HR-Net', 'hrnet'),
      Row('segformer', 'SegFormer', 'segformer'),
      Row('cenet', 'CE-Net', 'cenet'),
      Row('msunet', 'MSU-Net', 'msunet'),
      _OURS,
      # Beyond the paper: the field's strong baseline ("nnU-Net Revisited", Isensee et al.
      # 2024), and EC-CaM-UNet under the same recipe, so the table tells network from recipe
      Row('nnunet2d', 'nnU-Net 2-D', 'nnunet2d', recipe='nnunet', in_paper=False),
      Row(
        'ec_cam_unet_nnunet_recipe', 'EC-CaM-UNet', 'ec_cam_unet', recipe='nnunet', in_paper=False
      ),
    ),
    reference='ec_cam_unet',
  ),
  '2': Table(
    '2',
    'Table II: ablation of the modules',
    (
      Row('unet', 'U-Net', 'unet'),
      Row('unet_cc', 'U-Net+CC', 'unet_cc'),
      Row('unet_sc', 'U-Net+SC', 'unet_sc'),
      Row('unet_mus', 'U-Net+MuS', 'unet_mus'),
      Row('unet_ec', 'U-Net+EC', 'unet_ec'),
      Row('unet_dws', 'U-Net+DWS', 'unet_dws'),
      Row('unet_coa', 'U-Net+CoA', 'unet_coa'),
      Row('unet_coag_musfu', 'U-Net+CoAG-MuSFu', 'unet_coag_musfu'),
      Row('unet_coag_musfu_ec', 'U-Net+CoAG-MuSFu+EC', 'unet_coag_musfu_ec'),
      _OURS,
    ),
    reference='ec_cam_unet',
  ),
  '3': Table(
    '3',
    'Table III: ways of combining attention and multi-scale (rows mapped by citation)',
    (
      Row('fusion_serial', 'CoA -> MuS [8], [10] (series)', 'fusion_serial'),
      Row('fusion_add', 'CoA + MuS [14] (added)', 'fusion_add'),
      Row('ec_cam_unet', 'Ours (1x1-conv fusion)', 'ec_cam_unet'),
    ),
    reference='ec_cam_unet',
    metrics=('dsc',),
  ),
  '4': Table(
    '4',
    'Table IV: U-Net trained with different losses',
    (
      Row('dice', 'L_Dice', 'unet', _DICE_ONLY),
      Row('bce', 'L_BCE', 'unet', (('loss.w_dice', 0.0), ('loss.w_bce', 1.0))),
      Row('dice_bce', 'L_Dice + L_BCE', 'unet', (('loss.w_dice', 1.0), ('loss.w_bce', 1.0))),
    ),
    reference='dice_bce',
    metrics=('dsc',),
  ),
  '5': Table(
    '5',
    'Table V: attention blocks at the end of the U-Net encoder',
    (
      Row('unet_se', 'U-Net+SE', 'unet_se'),
      Row('unet_cbam', 'U-Net+CBAM', 'unet_cbam'),
      Row('unet_cc', 'U-Net+CC', 'unet_cc'),
      Row('unet_sc', 'U-Net+SC', 'unet_sc'),
      Row('unet_coa', 'U-Net+CoA', 'unet_coa'),
    ),
    reference='unet_coa',
  ),
  'fig4': Table(
    'fig4',
    'Fig. 4: the weighted loss alpha * L_Dice + (1 - alpha) * L_BCE (eq. 17), EC-CaM-UNet',
    tuple(
      Row(f'alpha_{a / 10:.1f}', f'alpha = {a / 10:.1f}', 'ec_cam_unet', (('loss.alpha', a / 10),))
      for a in range(1, 10)
    ),
    reference='alpha_0.5',
    metrics=('dsc',),
  ),
  'fig5': Table(
    'fig5',
    'Fig. 5: Grad-CAM maps at the attention blocks',
    (
      Row('unet_coa', 'U-Net+CoA (Ours)', 'unet_coa'),
      Row('attention_unet', 'Attention U-Net', 'attention_unet'),
      Row('unet_se', 'U-Net+SE', 'unet_se'),
      Row('danet', 'DA-Net', 'danet'),
      Row('unet_cbam', 'U-Net+CBAM', 'unet_cbam'),
    ),
    reference='unet_coa',
  ),
}

# fig5 reuses a row trained for another table when it is there (same variant, same config).
FIG5_SOURCES = {
  'unet_coa': ('5', '2'),
  'attention_unet': ('1',),
  'unet_se': ('5',),
  'danet': ('1',),
  'unet_cbam': ('5',),
}


def get(name: str) -> Table:
  """The table called `name` ('1'..'5', 'fig4', 'fig5'; roman numerals accepted)."""
  key = {'i': '1', 'ii': '2', 'iii': '3', 'iv': '4', 'v': '5'}.get(name.lower(), name.lower())
  if key not in TABLES:
    raise ValueError(f'--table={name!r}; expected one of {list(TABLES)}')
  return TABLES[key]


def select(table: Table, rows: str = '') -> list[Row]:
  """The rows to run: `rows` ('a,b': these, in the table's order; '' = all)."""
  chosen = list(table.rows)
  if rows:
    wanted = [r.strip() for r in rows.split(',') if r.strip()]
    unknown = sorted(set(wanted) - {r.id for r in table.rows})
    if unknown:
      raise ValueError(
        f'--rows: {unknown} not in {table.name}; its rows: {[r.id for r in table.rows]}'
      )
    chosen = [r for r in chosen if r.id in wanted]
  return chosen
