"""Training end to end on a tiny phantom: exact resume after SIGTERM, guard rails, and
the demo config through main."""

import json
import os
import pathlib
import signal

import chex
import numpy as np
import pytest
from absl import flags

from ecam_jax import train
from ecam_jax.configuration import load_config
from ecam_jax.data import phantom, prepare
from ecam_jax.errors import ConfigError

import nifti_fixtures as fx
import tiny_runs

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tiny_phantom(tmp_path_factory):
  out = tmp_path_factory.mktemp('data') / 'phantom'
  phantom.generate(out, 3, seed=0, size=64)
  return out


_config = tiny_runs.config


@pytest.fixture(scope='module')
def straight(tiny_phantom, tmp_path_factory):
  """The uninterrupted tiny run that the resumed ones must end equal to: (its workdir,
  its summary)."""
  workdir = tmp_path_factory.mktemp('straight')
  summary = train.train_and_evaluate(_config(tiny_phantom), workdir)
  assert not summary.get('interrupted')
  return workdir, summary


def test_interrupted_and_resumed_equals_uninterrupted(
  tiny_phantom, straight, tmp_path, monkeypatch
):
  straight_dir, summary = straight
  tiny_runs.assert_binary_unchanged(straight_dir, 'tiny_unet')
  total = summary['total_steps']

  original_write = train.Monitor.write

  def write_then_sigterm(self, step, kind, values):
    original_write(self, step, kind, values)
    if kind == 'train' and step == 4:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(train.Monitor, 'write', write_then_sigterm)
  first = train.train_and_evaluate(_config(tiny_phantom), tmp_path / 'resumed')
  assert first['interrupted'] and first['step'] == 4
  monkeypatch.setattr(train.Monitor, 'write', original_write)
  second = train.train_and_evaluate(_config(tiny_phantom), tmp_path / 'resumed')
  assert second['step'] == total and not second.get('interrupted')

  a, meta_a = tiny_runs.variables(straight_dir)
  b, meta_b = tiny_runs.variables(tmp_path / 'resumed')
  assert meta_a['step'] == meta_b['step'] == total
  chex.assert_trees_all_close(a, b, atol=1e-6, rtol=1e-6)
  records = [
    json.loads(x) for x in (tmp_path / 'resumed' / 'metrics.jsonl').read_text().splitlines()
  ]
  assert {r['kind'] for r in records} == {'train', 'val'}
  for name in ('config.json', 'splits.json'):
    assert (tmp_path / 'resumed' / name).is_file()
  assert list((tmp_path / 'resumed' / 'tensorboard').glob('events.out.tfevents.*'))
  assert list((tmp_path / 'resumed' / 'val_overlays').glob('step_*.png'))
  assert (tmp_path / 'resumed' / 'checkpoints' / 'best').is_dir()


def _poison_training_case(config, workdir):
  """Prepares the cache, then writes NaN into the training case's slices (a corrupt cache:
  the compiled step is the same as in the other runs)."""
  cache, case_splits = prepare.prepare_data(config, prepare.prepare_workdir(workdir))
  (case,) = case_splits['train']
  image = np.load(cache.path / 'cases' / case / 'image.npy', mmap_mode='r+')
  image[:, 3, 3] = np.nan
  image.flush()


def test_nonfinite_loss_stops_naming_the_step(tiny_phantom, tmp_path):
  config = _config(tiny_phantom)
  _poison_training_case(config, tmp_path)
  with pytest.raises(FloatingPointError, match=r'not finite at step 1;'):
    train.train_and_evaluate(config, tmp_path)
  assert not (tmp_path / 'checkpoints' / 'best').exists() or not any(
    (tmp_path / 'checkpoints' / 'best').iterdir()
  )


def test_nonfinite_skip_keeps_training(tiny_phantom, tmp_path):
  config = _config(tiny_phantom, nonfinite='skip')
  _poison_training_case(config, tmp_path)
  summary = train.train_and_evaluate(config, tmp_path)
  records = [json.loads(x) for x in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  last_train = [r for r in records if r['kind'] == 'train'][-1]
  assert last_train['skipped_steps'] == summary['total_steps'] == summary['step']


def test_missing_data_root_says_where_to_get_it(tmp_path):
  config = load_config(ROOT / 'configs/msd.py')
  config.data.root = str(tmp_path / 'nowhere')
  with pytest.raises(ConfigError, match='medicaldecathlon.com'):
    train.train_and_evaluate(config, tmp_path / 'run')
  assert not (tmp_path / 'run' / 'config.json').exists()


def test_unwritable_workdir_is_a_clear_error(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(OSError, match='not writable'):
    prepare.prepare_workdir(blocker / 'run')


def test_resume_with_reader_workers_sees_the_same_data(tiny_phantom, straight, tmp_path):
  """The data position is a global batch index, so a run resumed with grain reader
  workers (or another process count: tests/test_multiprocess.py) reads what it would have
  read without stopping, and ends with the same parameters."""
  resumed = tmp_path / 'resumed'
  train.train_and_evaluate(_config(tiny_phantom, max_steps=3), resumed)
  config = _config(tiny_phantom)
  config.data.num_workers = 1
  if not flags.FLAGS.is_parsed():  # as absl.app.run does; grain's workers read flags
    flags.FLAGS.mark_as_parsed()
  train.train_and_evaluate(config, resumed)
  a, meta_a = tiny_runs.variables(straight[0])
  b, meta_b = tiny_runs.variables(resumed)
  assert meta_a['step'] == meta_b['step']
  chex.assert_trees_all_close(a, b, atol=1e-6, rtol=1e-6)


def test_train_dsc_comes_from_counts_summed_over_the_log_window():
  """Two batches: one with no foreground and nothing predicted (its own ratio would be
  undefined, or 1.0 by the old convention), one with TP 1, FP 1, FN 0. The window's DSC is
  2 * 1 / (2 * 1 + 1) from the summed counts, not the mean of per-batch ratios."""
  window = train.Window()
  window.add({'loss': np.float32(1.0), 'counts': np.array([[0, 0, 0]]), 'finite': True})
  window.add({'loss': np.float32(3.0), 'counts': np.array([[1, 1, 0]]), 'finite': True})
  values = window.flush()
  assert values['loss'] == 2.0 and abs(values['dsc'] - 2 / 3) < 1e-12
  window.add({'loss': np.float32(1.0), 'counts': np.array([[0, 0, 0]]), 'finite': True})
  assert np.isnan(window.flush()['dsc'])  # undefined, never 1.0
  # Several classes and a region: each item's DSC from its summed counts; 'dsc' is the
  # mean over the classes where defined (class b: nothing labelled, nothing predicted).
  window = train.Window(('a', 'b', 'ab'), ('a', 'b'))
  window.add({'loss': np.float32(1.0), 'counts': np.array([[1, 1, 0], [0, 0, 0], [1, 1, 0]])})
  window.add({'loss': np.float32(1.0), 'counts': np.array([[1, 0, 1], [0, 0, 0], [2, 0, 1]])})
  values = window.flush()
  assert values['dsc/a'] == 4 / 6 and np.isnan(values['dsc/b']) and values['dsc/ab'] == 6 / 8
  assert values['dsc'] == 4 / 6


def test_without_foreground_in_val_the_best_is_chosen_by_the_val_loss(tiny_phantom, tmp_path):
  config = _config(tiny_phantom)
  cache, case_splits = prepare.prepare_data(config, prepare.prepare_workdir(tmp_path))
  (case,) = case_splits['val']
  label = np.load(cache.path / 'cases' / case / 'label.npy', mmap_mode='r+')
  label[:] = 0  # the validation case now holds no foreground voxel
  label.flush()
  train.train_and_evaluate(config, tmp_path)
  records = [json.loads(x) for x in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  vals = [r for r in records if r['kind'] == 'val']
  assert len(vals) == 2 and all(r['selected_by'] == 'neg_val_loss' for r in vals)
  best_step = min(vals, key=lambda r: r['loss'])['step']
  _, meta = tiny_runs.variables(tmp_path, 'best')
  assert meta['step'] == best_step and meta['selection']['metric'] == 'neg_val_loss'


def test_a_users_mistake_prints_its_message_alone(tmp_path):
  """configs/demo.py (splits 8/2/2) pointed at a 4-case folder: main stops before any
  volume is cached, prints the message naming the key, no traceback, and exits 1."""
  import subprocess
  import sys

  fx.write_msd(tmp_path / 'data', num_cases=4)
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'ecam_jax.main',
      '--config=configs/demo.py',
      f'--workdir={tmp_path / "run"}',
      f'--config.data.root={tmp_path / "data"}',
    ],
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert result.stderr.startswith('error: ') and 'config.data.split_sizes' in result.stderr
  assert not (tmp_path / 'run' / 'cache').exists()


def test_a_global_batch_smaller_than_the_device_count_trains(tiny_phantom, tmp_path):
  """The paper's batch of 4 on 8 devices: padded to 8, the padding counted nowhere (the
  step's equality with one device is tests/test_steps.py's); the loop runs and validates."""
  config = _config(tiny_phantom, batch_size=4, max_steps=3, eval_every_epochs=1)
  summary = train.train_and_evaluate(config, tmp_path)
  assert summary['step'] == 3
  records = [json.loads(x) for x in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert all(np.isfinite(r['loss']) for r in records if r['kind'] == 'train')
