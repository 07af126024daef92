"""The paper's numbers as transcribed (ecam_jax/experiments/paper_results.json): cells
spot-checked against the paper, every table row present, the errata kept as printed."""

import pytest

from ecam_jax.experiments import paper, tables

CELLS = [
  # (table, row, dataset, metric, as printed)
  ('1', 'unet', 'tcia', 'dsc', 67.80),
  ('1', 'deeplabv3plus', 'msd', 'precision', 73.13),
  ('1', 'hrnet', 'kits', 'precision', 96.72),
  ('1', 'cenet', 'cardiac', 'sensitivity', 78.64),
  ('1', 'ec_cam_unet', 'cardiac', 'precision', 82.51),
  ('2', 'unet_dws', 'tcia', 'dsc', 69.15),
  ('2', 'unet_mus', 'kits', 'dsc', 93.42),
  ('2', 'unet_coag_musfu_ec', 'msd', 'sensitivity', 73.65),
  ('2', 'unet_cc', 'msd', 'precision', 78.03),
  ('3', 'fusion_serial', 'tcia', 'dsc', 69.58),
  ('3', 'fusion_add', 'cardiac', 'dsc', 78.02),
  ('4', 'bce', 'msd', 'dsc', 65.85),
  ('4', 'dice_bce', 'kits', 'dsc', 93.89),
  ('5', 'unet_cbam', 'cardiac', 'sensitivity', 80.14),
  ('5', 'unet_cc', 'msd', 'precision', 75.80),
  ('fig4', 'alpha_0.3', 'tcia', 'dsc', 73.14),
]


@pytest.mark.parametrize('table,row,dataset,metric,printed', CELLS)
def test_cells_as_printed(table, row, dataset, metric, printed):
  assert paper.value(table, row, dataset, metric) == printed


def test_every_row_of_every_table_has_the_papers_cells():
  for name, table in tables.TABLES.items():
    if name == 'fig5':  # a figure of heat maps: no numbers
      continue
    for row in (r for r in table.rows if r.in_paper):  # rows we add have no paper cells
      for dataset in paper.COLUMNS if name != 'fig4' else ('tcia',):
        for metric in table.metrics:
          value = paper.value(name, row.id, dataset, metric)
          assert value is None if name == 'fig4' and row.id != 'alpha_0.3' else value > 0


def test_errata_kept_as_printed():
  # DA-Net and SegFormer share most cells; U-Net+CoA differs between Tables II and V.
  for dataset in ('tcia', 'msd'):
    for metric in ('dsc', 'sensitivity', 'precision'):
      assert paper.value('1', 'danet', dataset, metric) == paper.value(
        '1', 'segformer', dataset, metric
      )
  assert paper.value('1', 'danet', 'cardiac', 'dsc') != paper.value(
    '1', 'segformer', 'cardiac', 'dsc'
  )
  assert paper.value('2', 'unet_coa', 'tcia', 'dsc') == 69.58
  assert paper.value('5', 'unet_coa', 'tcia', 'dsc') == 70.24
  # Table I's U-Net is Table IV's Dice-only U-Net and Table II's first row.
  for dataset in paper.COLUMNS:
    assert paper.value('1', 'unet', dataset, 'dsc') == paper.value('4', 'dice', dataset, 'dsc')
    assert paper.results()['tables']['1']['unet'] == paper.results()['tables']['2']['unet']
  notes = ' '.join(e['where'] + ' ' + e['note'] for e in paper.errata())
  for words in ('DA-Net and SegFormer', '70.24', 'by citation', 'Fig. 4', "MSU-Net's"):
    assert words in notes


def test_table_iii_rows_mapped_by_citation():
  table = tables.get('III')
  assert [(r.id, r.variant) for r in table.rows] == [
    ('fusion_serial', 'fusion_serial'),
    ('fusion_add', 'fusion_add'),
    ('ec_cam_unet', 'ec_cam_unet'),
  ]
  assert '[8], [10]' in table.rows[0].label and '[14]' in table.rows[1].label


def test_config_datasets_name_the_papers_columns():
  assert [paper.column(d) for d in ('tcia_pancreas', 'msd_pancreas', 'kits19', 'msd_heart')] == [
    'tcia',
    'msd',
    'kits',
    'cardiac',
  ]
  assert paper.column('phantom') is None and paper.column('custom') is None
