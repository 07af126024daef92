"""The paper's experiments end to end on a tiny phantom (two rows of Table IV, trained once
for the module), the runner's skip / resume / lock, the CLI's --collect and --dry_run, and
the report's statistics on known numbers."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ecam_jax import evaluate, folder_lock, train
from ecam_jax.configuration import load_config
from ecam_jax.errors import ConfigError
from ecam_jax.experiments import gradcam, outputs, report, runner, tables

ROOT = pathlib.Path(__file__).resolve().parents[1]
TABLE4 = tables.get('4')


def _config_for(variant, recipe='paper'):
  """configs/demo.py for `variant`, shrunk: a 3-case 64x64 phantom at 32x32, base width 4,
  one epoch of 8 steps with a checkpoint every 4."""
  c = load_config(ROOT / 'configs/demo.py', f'variant={variant},recipe={recipe}')
  c.data.phantom_cases = 3
  c.data.phantom_size = 64
  c.data.image_size = 32
  c.data.split_sizes = (1, 1, 1)
  c.data.prepare_workers = 1
  c.model.base_channels = 4
  c.train.update(
    batch_size=8,
    epochs=1,
    log_every_steps=2,
    warmup_steps=0,
    overlay_slices=2,
    checkpoint_every_steps=4,
  )
  c.eval.overlay_slices = 1
  return c


def _runs(workdir, rows, seeds=0, folds=0):
  return runner.runs(TABLE4, tables.select(TABLE4, rows), workdir, seeds, folds)


def _run(workdir, rows, seeds=0):
  return runner.run_table(TABLE4, _runs(workdir, rows, seeds), _config_for, workdir, report=print)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """Table IV's `dice` and `dice_bce` rows trained and evaluated; `bce` never run."""
  out = tmp_path_factory.mktemp('paper')
  outcomes = _run(out, 'dice,dice_bce')
  assert [(o.name, o.action) for o in outcomes] == [('dice', 'trained'), ('dice_bce', 'trained')]
  return out


def _forbid_work(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('nothing should be trained or evaluated')

  monkeypatch.setattr(train, 'train_and_evaluate', fail)
  monkeypatch.setattr(evaluate, 'evaluate_split', fail)


def _train_steps(row_dir):
  lines = (row_dir / 'metrics.jsonl').read_text().splitlines()
  return [r['step'] for r in map(json.loads, lines) if r['kind'] == 'train']


def test_table_has_ours_and_the_papers_values(workdir):
  plan = {'dataset': 'phantom', 'paper_column': 'tcia', 'seeds': 0, 'forced': True}
  paths = outputs.write_outputs(TABLE4, workdir, plan)
  assert {p.name for p in paths} == {
    'table_4.json',
    'table_4.csv',
    'table_4.md',
    'table_4.png',
    'table_4_val_dsc.png',
  }
  result = json.loads((workdir / 'table_4.json').read_text())
  rows = {r['id']: r for r in result['rows']}
  statuses = [rows[r]['status'] for r in ('dice', 'bce', 'dice_bce')]
  assert statuses == ['finished', 'pending', 'finished']
  dsc = rows['dice']['metrics']['dsc']
  summary = json.loads((workdir / 'table_4/dice/eval/summary.json').read_text())
  assert dsc['ours'] == pytest.approx(summary['mean']['slice_dsc'] * 100)
  assert dsc['per_volume'] == pytest.approx(summary['mean']['dsc'] * 100)
  assert dsc['paper'] == 67.80 and dsc['diff'] == pytest.approx(dsc['ours'] - 67.80)
  assert rows['dice']['wilcoxon']['n'] == 1  # one test case, paired with dice_bce's
  assert result['reference'] == {'row': 'dice_bce', 'from': 'table_4/dice_bce'}
  md = (workdir / 'table_4.md').read_text()
  assert 'chosen by --paper_dataset' in md and '| L_BCE | pending | – | 65.77 |' in md
  assert f'| L_Dice | finished | {dsc["ours"]:.2f} | 67.80 | {dsc["diff"]:+.2f} |' in md
  assert (workdir / 'table_4.png').read_bytes()[:4] == b'\x89PNG'


def test_rerun_trains_and_evaluates_nothing(workdir, monkeypatch):
  _forbid_work(monkeypatch)
  assert [o.action for o in _run(workdir, 'dice,dice_bce')] == ['skipped', 'skipped']


def test_trained_but_not_evaluated_is_only_evaluated(workdir, monkeypatch):
  summary = workdir / 'table_4/dice_bce/eval/summary.json'
  before = json.loads(summary.read_text())
  summary.unlink()
  monkeypatch.setattr(train, 'train_and_evaluate', lambda *a, **k: pytest.fail('retrained'))
  assert [o.action for o in _run(workdir, 'dice_bce')] == ['evaluated']
  assert json.loads(summary.read_text())['mean'] == before['mean']


class Killed(Exception):
  """Stands for a kill right after the first checkpoint."""


def test_row_killed_mid_training_resumes_from_its_checkpoint(workdir, monkeypatch):
  save = train.Checkpoints.save_latest

  def save_then_die(self, state, meta):
    save(self, state, meta)
    if int(state.step) == 4:
      raise Killed

  monkeypatch.setattr(train.Checkpoints, 'save_latest', save_then_die)
  with pytest.raises(Killed):
    _run(workdir, 'dice', seeds=1)  # dice_seed0: dice's config, seed 0
  row_dir = workdir / 'table_4/dice_seed0'
  assert runner.state_of(row_dir) == runner.INTERRUPTED  # the lock died with the runner
  assert _train_steps(row_dir) == [2, 4]
  monkeypatch.setattr(train.Checkpoints, 'save_latest', save)
  assert [o.action for o in _run(workdir, 'dice', seeds=1)] == ['trained']
  assert _train_steps(row_dir) == [2, 4, 6, 8]  # steps 5-8 only: resumed, not restarted


_HOLD = (
  'import fcntl, sys, time\n'
  'f = open(sys.argv[1], "a+")\n'
  'fcntl.flock(f, fcntl.LOCK_EX)\n'
  'print("held", flush=True)\n'
  'time.sleep(120)\n'
)


def test_row_locked_by_another_runner_is_skipped_as_running(workdir, monkeypatch):
  _forbid_work(monkeypatch)
  row_dir = workdir / 'table_4/bce'
  row_dir.mkdir(parents=True, exist_ok=True)
  other = subprocess.Popen(
    [sys.executable, '-c', _HOLD, str(row_dir / folder_lock.LOCK_NAME)],
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert other.stdout.readline().strip() == 'held'
    assert [o.action for o in _run(workdir, 'bce')] == ['running elsewhere']
    assert runner.state_of(row_dir) == runner.RUNNING
  finally:
    other.kill()
    other.wait()
  assert folder_lock.holder(row_dir) is None  # a dead runner holds nothing
  assert runner.state_of(row_dir) == runner.NOT_STARTED


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  run = subprocess.run(
    [sys.executable, '-m', 'ecam_jax.experiments', '--table=4', *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert run.returncode == 0, run.stderr
  return run.stdout


def test_cli_collect_marks_missing_rows_pending_and_dry_run_lists_rows(workdir):
  out = _cli(f'--workdir={workdir}', '--collect')
  assert f'wrote {workdir / "table_4.md"}' in out
  md = (workdir / 'table_4.md').read_text()
  assert "paper: n/a (dataset '' is not in the paper)" in md
  assert '| L_BCE | pending |' in md and '| L_Dice | finished |' in md
  listed = _cli(f'--workdir={workdir}', '--config=configs/demo.py', '--dry_run').splitlines()
  assert listed == [
    f'dice: variant=unet --config.loss.w_dice=1.0 --config.loss.w_bce=0.0 -> '
    f'{workdir}/table_4/dice [finished]',
    f'bce: variant=unet --config.loss.w_dice=0.0 --config.loss.w_bce=1.0 -> '
    f'{workdir}/table_4/bce [not started]',
    f'dice_bce: variant=unet --config.loss.w_dice=1.0 --config.loss.w_bce=1.0 -> '
    f'{workdir}/table_4/dice_bce [finished]',
  ]


def test_shards_split_the_runs_disjointly(tmp_path):
  """A shard is every n-th run: a row, a seed of it, or with folds one fold of one row (one
  SLURM array task per row and fold)."""
  table = tables.get('II')
  every = runner.runs(table, tables.select(table), tmp_path)
  shards = [runner.shard(every, f'{i}/3') for i in range(3)]
  ids = [run.row.id for shard in shards for run in shard]
  assert sorted(ids) == sorted(r.id for r in table.rows) and len(ids) == len(set(ids))
  two = runner.runs(table, tables.select(table, 'ec_cam_unet,unet'), tmp_path)
  assert [run.row.id for run in runner.shard(two, '1/2')] == ['ec_cam_unet']
  folds = runner.runs(table, tables.select(table, 'unet,ec_cam_unet'), tmp_path, seeds=2, folds=5)
  assert len(folds) == 2 * 2 * 5
  assert [run.label for run in runner.shard(folds, '7/20')] == ['unet_seed1/fold_2']
  assert runner.shard(folds, '7/20')[0].folder == tmp_path / 'table_2/unet_seed1/fold_2'
  for bad in ('3/3', 'x', '1'):
    with pytest.raises(ValueError, match='--shard'):
      runner.shard(every, bad)
  with pytest.raises(ValueError, match="'nope'"):
    tables.select(table, 'unet,nope')


def test_fig5_grid_reuses_other_tables_rows(workdir):
  # A trained plain U-Net stands in for Table V's U-Net+CoA: its bottleneck (the identity
  # without attention) is where Grad-CAM reads U-Net+CoA's map.
  shutil.copytree(workdir / 'table_4/dice', workdir / 'table_5/unet_coa')
  fig5 = tables.get('fig5')
  path = outputs.write_outputs(fig5, workdir, {})[0]
  assert path == workdir / 'fig5.png' and path.read_bytes()[:4] == b'\x89PNG'
  slices = gradcam.pick_slices(workdir / 'table_5/unet_coa', 2)
  _, labels = gradcam.slice_arrays(workdir / 'table_5/unet_coa', slices)
  assert labels.reshape(2, -1).max(axis=1).tolist() == [1, 1]  # the slices with most foreground
  assert runner.source_dir(workdir, fig5, fig5.row('unet_coa'), 'unet_coa') == (
    workdir / 'table_5/unet_coa'
  )
  assert runner.source_dir(workdir, fig5, fig5.row('unet_se'), 'unet_se') == (
    workdir / 'fig5/unet_se'
  )


def test_row_whose_checkpoint_refuses_the_config_fails_alone(workdir, monkeypatch):
  def longer(variant, recipe):
    config = _config_for(variant, recipe)
    config.train.epochs = 2
    return config

  outcomes = runner.run_table(
    TABLE4, _runs(workdir, 'dice'), longer, workdir, errors=(ConfigError,), report=print
  )
  assert [o.action for o in outcomes] == ['failed']
  assert 'train.epochs' in outcomes[0].error
  error = workdir / 'table_4/dice' / runner.ERROR_FILE
  assert 'ConfigError' in error.read_text()
  error.unlink()


def test_a_table_over_folds_trains_each_fold_and_scores_every_case_out_of_fold(
  tmp_path, monkeypatch
):
  """--folds=2 on the 3-case phantom (1 test case held out, 2 folds of 1 case): each row
  trains ROW/fold_0 and ROW/fold_1 (their programs are the module's), then scores both
  validation cases together into ROW/crossval; the table reports that out-of-fold score ±
  the std over the folds, and pairs the rows over every case."""
  outcomes = runner.run_table(
    TABLE4, _runs(tmp_path, 'dice,dice_bce', folds=2), _config_for, tmp_path, report=print
  )
  assert [(o.name, o.action) for o in outcomes] == [
    ('fold_0', 'trained'),
    ('fold_1', 'trained'),
    ('crossval', 'scored out of fold'),
  ] * 2
  rows = {name: tmp_path / 'table_4' / name for name in ('dice', 'dice_bce')}
  for row_dir in rows.values():
    assert runner.state_of(row_dir) == runner.FINISHED
    assert json.loads((row_dir / 'fold_1' / 'config.json').read_text())['data']['fold'] == '1'
    assert (row_dir / 'cache' / 'splits_final.json').is_file()  # one per row, shared by its folds
  folds_of = [json.loads((d / 'cache' / 'splits_final.json').read_text()) for d in rows.values()]
  assert folds_of[0] == folds_of[1]  # the rows' folds are the same: their scores pair up
  _forbid_work(monkeypatch)
  monkeypatch.setattr(evaluate, 'evaluate_folds', lambda *a: pytest.fail('scored again'))
  again = runner.run_table(
    TABLE4, _runs(tmp_path, 'dice,dice_bce', folds=2), _config_for, tmp_path, report=print
  )
  assert [o.action for o in again] == ['skipped'] * 4
  result = report.collect(TABLE4, tmp_path, None, folds=2)
  by_id = {row['id']: row for row in result['rows']}
  summary = json.loads((rows['dice'] / 'crossval' / 'summary.json').read_text())
  assert summary['count']['cases'] == 2
  dsc = by_id['dice']['metrics']['dsc']
  assert dsc['ours'] == pytest.approx(100 * summary['mean']['slice_dsc'])
  fold_means = [
    100 * np.nanmean([summary['cases'][c]['slice_dsc'] for c in fold['cases']])
    for fold in summary['folds']
  ]
  assert dsc['ours_std'] == pytest.approx(np.std(fold_means, ddof=1))
  assert by_id['dice']['wilcoxon']['n'] == 2  # every case, against dice_bce's out of fold
  assert 'out of fold' in report.markdown(result)
  assert runner.listing(TABLE4, _runs(tmp_path, 'bce', folds=2)) == [
    f'bce/fold_{k}: variant=unet --config.loss.w_dice=0.0 --config.loss.w_bce=1.0 '
    f'--config.data.fold={k} -> {tmp_path}/table_4/bce/fold_{k} [not started]'
    for k in (0, 1)
  ]
