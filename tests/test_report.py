"""The tables' report on known numbers: the paired test, means and stds over seeds, the
collected table (unavailable, running and multi-class rows), Fig. 4's plot. No training."""

import json

import numpy as np
import pytest
from scipy import stats

from ecam_jax import folder_lock, scoring
from ecam_jax.experiments import outputs, report, tables
from ecam_jax.models import registry


def test_wilcoxon_pairs_by_case_id():
  rng = np.random.default_rng(0)
  cases = [f'case{i}' for i in range(8)]
  ref = {c: float(v) for c, v in zip(cases, rng.uniform(0.5, 0.9, 8), strict=True)}
  ours = {c: ref[c] + d for c, d in zip(cases, rng.normal(0.05, 0.03, 8), strict=True)}
  shuffled = dict([*reversed(ours.items()), ('only_ours', 0.1)])
  test = report.wilcoxon(shuffled, ref)
  expected = stats.wilcoxon([ours[c] - ref[c] for c in cases])
  assert test['n'] == 8 and test['p'] == pytest.approx(expected.pvalue) and not test['note']
  assert test['median_diff'] == pytest.approx(np.median([ours[c] - ref[c] for c in cases]) * 100)
  few = report.wilcoxon({c: ours[c] for c in cases[:4]}, ref)
  assert few['n'] == 4 and 'underpowered' in few['note'] and few['p'] is not None
  assert report.wilcoxon(ref, ref)['p'] is None


def test_mean_std_and_case_means_over_seeds():
  assert report.mean_std([70.0, 72.0, None]) == (71.0, pytest.approx(np.sqrt(2)))
  assert report.mean_std([70.0]) == (70.0, None) and report.mean_std([]) == (None, None)
  runs = [
    {'cases': {'a': {'slice_dsc': 0.5}, 'b': {'slice_dsc': None}}},
    {'cases': {'a': {'slice_dsc': 0.7}, 'b': {'slice_dsc': 0.4}}},
  ]
  assert report.case_means(runs) == {'a': pytest.approx(0.6), 'b': 0.4}


def _fake_summary(row_dir, slice_dsc, cases):
  """A test summary as evaluate_split writes it: per-case and mean scores."""
  per_case = {
    c: {'dsc': v, 'sensitivity': v, 'precision': v, 'slice_dsc': v}
    | {'slice_sensitivity': v, 'slice_precision': v}
    for c, v in zip(cases, slice_dsc, strict=True)
  }
  mean = {k: float(np.mean([s[k] for s in per_case.values()])) for k in per_case[cases[0]]}
  (row_dir / 'eval').mkdir(parents=True)
  (row_dir / 'eval' / 'summary.json').write_text(json.dumps({'cases': per_case, 'mean': mean}))


VARIANTS = registry.VARIANTS


def _only(*networks):
  """The registry's variants of `networks` alone: the other networks' rows as unavailable."""
  return {v: entry for v, entry in VARIANTS.items() if entry[0] in networks}


def test_collect_with_seeds_marks_unavailable_and_running(tmp_path, monkeypatch):
  table = tables.get('1')
  cases = ['c1', 'c2', 'c3']
  _fake_summary(tmp_path / 'table_1/unet_seed0', [0.6, 0.7, 0.8], cases)
  _fake_summary(tmp_path / 'table_1/unet_seed1', [0.7, 0.8, 0.9], cases)
  _fake_summary(tmp_path / 'table_2/ec_cam_unet_seed0', [0.8, 0.8, 0.8], cases)
  _fake_summary(tmp_path / 'table_2/ec_cam_unet_seed1', [0.8, 0.8, 0.8], cases)
  _fake_summary(tmp_path / 'table_1/msunet_seed0', [0.5, 0.5, 0.5], cases)
  monkeypatch.setattr(registry, 'VARIANTS', _only('ecam_unet', 'msunet'))
  result = report.collect(table, tmp_path, 'msd', seeds=2, dataset='msd_pancreas')
  rows = {r['id']: r for r in result['rows']}
  assert rows['hrnet']['status'] == 'unavailable' and rows['msunet']['status'] == 'partial'
  assert rows['cenet']['status'] == 'unavailable' and rows['unetpp']['status'] == 'unavailable'
  unet = rows['unet']['metrics']['dsc']
  assert unet['ours'] == pytest.approx(75.0) and unet['ours_std'] == pytest.approx(np.sqrt(50))
  assert unet['paper'] == 65.35 and unet['diff'] == pytest.approx(75.0 - 65.35)
  # The reference comes from Table II's folder; per-case means over seeds: .65 .75 .85 vs .8
  assert result['reference']['from'] == 'table_2/ec_cam_unet'
  assert rows['unet']['wilcoxon']['median_diff'] == pytest.approx(-5.0)
  assert rows['ec_cam_unet']['status'] == 'pending' and 'wilcoxon' not in rows['ec_cam_unet']
  md = report.markdown(result)
  assert '- Table I, DA-Net and SegFormer: identical TCIA and MSD triples' in md
  assert 'Table III' not in md
  with folder_lock.folder_lock(tmp_path / 'table_1/attention_unet_seed0') as held:
    assert held
    monkeypatch.setattr(registry, 'VARIANTS', _only('ecam_unet', 'attention_unet'))
    result = report.collect(table, tmp_path, None, seeds=2)
  rows = {r['id']: r for r in result['rows']}
  assert rows['attention_unet']['status'] == 'running'
  assert rows['unet']['metrics']['dsc']['paper'] is None
  md = report.markdown(result)
  assert '| U-Net | finished | 75.00 ± 7.07 | – | – |' in md
  assert "The paper's numbers" not in md  # its errata only beside its numbers


def test_fig4_plots_dsc_against_alpha(tmp_path):
  for alpha, dsc in (('0.1', 0.70), ('0.3', 0.74), ('0.5', 0.72)):
    _fake_summary(tmp_path / f'fig4/alpha_{alpha}', [dsc, dsc + 0.02], ['c1', 'c2'])
  plan = {'dataset': 'tcia_pancreas', 'paper_column': 'tcia', 'seeds': 0}
  paths = outputs.write_outputs(tables.get('fig4'), tmp_path, plan)
  assert (tmp_path / 'fig4.png') in paths and (tmp_path / 'fig4.png').stat().st_size > 0
  rows = {r['id']: r for r in json.loads((tmp_path / 'fig4.json').read_text())['rows']}
  assert rows['alpha_0.3']['metrics']['dsc']['paper'] == 73.14
  assert rows['alpha_0.3']['metrics']['dsc']['diff'] == pytest.approx(75.0 - 73.14)
  assert rows['alpha_0.1']['metrics']['dsc']['paper'] is None
  assert rows['alpha_0.9']['status'] == 'pending'
  assert rows['alpha_0.1']['wilcoxon']['n'] == 2  # against alpha = 0.5


def test_multiclass_rows_list_each_class_beside_the_mean(tmp_path):
  """Summaries of multi-class runs (scoring.summarize_classes): the headline values are the
  mean over the classes, and each class and region has its own column."""
  table = tables.get('1')
  keys = ('dsc', 'sensitivity', 'precision', 'slice_dsc', 'slice_sensitivity', 'slice_precision')
  for seed, (organ, tumour) in enumerate([(0.8, 0.4), (0.9, 0.6)]):
    per_item = {
      name: {c: {k: value for k in keys} | {'tp': 1, 'fp': 0, 'fn': 0} for c in ('c1', 'c2')}
      for name, value in (('organ', organ), ('tumour', tumour), ('both', 0.85))
    }
    row_dir = tmp_path / f'table_1/unet_seed{seed}'
    (row_dir / 'eval').mkdir(parents=True)
    summary = scoring.summarize_classes(per_item, ['organ', 'tumour'])
    (row_dir / 'eval' / 'summary.json').write_text(json.dumps(summary))
  result = report.collect(table, tmp_path, 'msd', seeds=2)
  unet = {r['id']: r for r in result['rows']}['unet']
  assert unet['metrics']['dsc']['ours'] == pytest.approx((60 + 75) / 2)
  tumour = unet['per_class']['tumour']['dsc']
  assert tumour['ours'] == pytest.approx(50.0) and tumour['per_volume'] == pytest.approx(50.0)
  assert tumour['ours_std'] == pytest.approx(np.std([40, 60], ddof=1))
  md = report.markdown(result)
  assert '| row | organ | tumour | both |' in md
  assert '| U-Net | 85.00 ± 7.07 (85.00) | 50.00 ± 14.14 (50.00) | 85.00 ± 0.00 (85.00) |' in md
  assert 'unet,U-Net,finished,dsc/tumour,50.0' in report.csv_text(result)


def test_rows_beyond_the_paper_name_their_recipe_and_the_budget(tmp_path):
  """Table I's nnU-Net rows: marked as not in the paper, each with its recipe, no paper
  value; the budget line reads the runs' config.json (the same for every row)."""
  table = tables.get('1')
  cases = ['c1', 'c2']
  for row_id, dsc in (('nnunet2d', [0.9, 0.8]), ('unet', [0.7, 0.6])):
    _fake_summary(tmp_path / f'table_1/{row_id}', dsc, cases)
    config = {'train': {'epochs': 6, 'batch_size': 4}}
    (tmp_path / f'table_1/{row_id}/config.json').write_text(json.dumps(config))
  result = report.collect(table, tmp_path, 'msd')
  rows = {r['id']: r for r in result['rows']}
  assert rows['nnunet2d']['recipe'] == 'nnunet' and not rows['nnunet2d']['in_paper']
  assert rows['nnunet2d']['metrics']['dsc']['paper'] is None
  assert rows['unet']['recipe'] == 'paper' and rows['unet']['in_paper']
  md = report.markdown(result)
  assert '| nnU-Net 2-D (nnunet recipe) † | finished | 85.00 | – | – |' in md
  assert '| EC-CaM-UNet (nnunet recipe) † | pending |' in md
  assert 'Training budget: 6 epochs at a global batch of 4 for every row' in md
  assert '† Not in the paper' in md
