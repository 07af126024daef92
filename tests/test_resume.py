"""Resume survives every crash point, and refuses what it cannot continue.

The reference is one uninterrupted run. Each crash below leaves the workdir as a hard kill
would (a best checkpoint newer than the latest, a half-written save, a damaged newest
checkpoint, or a real SIGKILL of `python -m ecam_jax.main` at a moment it reports); the
same command run again must finish with the reference's parameters.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import chex
import pytest

from ecam_jax import train
from ecam_jax.data import phantom, prepare
from ecam_jax.errors import ConfigError, NonFiniteLossError

import tiny_runs

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A subprocess run here takes ~20-60 s on a quiet 2-core machine; the limits below are
# generous so that a busy machine (the suite's other worker) does not fail the test.
RUN_TIMEOUT_S = 900
EVENT_TIMEOUT_S = 600


def _config(root, **train):
  """tiny_runs' config (2 epochs), logging every step and saving every 2."""
  overrides = dict(epochs=2, log_every_steps=1, overlay_slices=1, checkpoint_every_steps=2)
  return tiny_runs.config(root, **{**overrides, **train})


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  out = tmp_path_factory.mktemp('data') / 'phantom'
  phantom.generate(out, 3, seed=0, size=64)
  return out


@pytest.fixture(scope='module')
def reference(data, tmp_path_factory):
  """The uninterrupted run: its summary and final variables."""
  workdir = tmp_path_factory.mktemp('reference')
  summary = train.train_and_evaluate(_config(data), workdir)
  assert summary['step'] == summary['total_steps'] and not summary.get('interrupted')
  return summary, tiny_runs.variables(workdir, 'latest')


def _steps(folder: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _assert_finishes_like(reference, workdir, config):
  summary = train.train_and_evaluate(config, workdir)
  ref_summary, (ref_vars, ref_meta) = reference
  assert summary['step'] == ref_summary['total_steps']
  variables, meta = tiny_runs.variables(workdir, 'latest')
  assert meta['step'] == ref_meta['step']
  chex.assert_trees_all_close(variables, ref_vars, atol=1e-6, rtol=1e-6)
  return summary


def test_best_newer_than_latest_resumes(data, reference, tmp_path):
  """The kill that used to make a workdir unresumable: a new best checkpoint at step S,
  then a kill before the latest reached S. The rerun reaches S again (same score): saving
  best at S must not fail, and the best score comes from the best checkpoint itself."""
  config = _config(data)
  steps_per_epoch = reference[0]['steps_per_epoch']
  train.train_and_evaluate(_config(data, max_steps=steps_per_epoch), tmp_path)
  latest, best = tmp_path / 'checkpoints' / 'latest', tmp_path / 'checkpoints' / 'best'
  assert _steps(best) == [steps_per_epoch]
  for step in _steps(latest):  # the kill: latest never got to the best's step
    if step >= steps_per_epoch - 1:
      shutil.rmtree(latest / str(step))
  assert _steps(latest) and max(_steps(latest)) < steps_per_epoch
  _assert_finishes_like(reference, tmp_path, config)


def test_half_written_and_damaged_checkpoints_are_skipped(data, reference, tmp_path):
  """A kill during a save leaves orbax's temporary folder; one while old checkpoints were
  deleted can leave a step folder without its arrays. Neither stops the rerun: the
  temporary folders are removed and the newest readable checkpoint is used."""
  train.train_and_evaluate(_config(data, max_steps=5), tmp_path)
  latest, best = tmp_path / 'checkpoints' / 'latest', tmp_path / 'checkpoints' / 'best'
  newest = max(_steps(latest))
  shutil.copytree(latest / str(newest), latest / f'{newest + 1}.orbax-checkpoint-tmp-1')
  if _steps(best):
    shutil.copytree(best / str(_steps(best)[0]), best / '9.orbax-checkpoint-tmp-2')
  shutil.rmtree(latest / str(newest) / 'state')  # the newest step lost its arrays
  _assert_finishes_like(reference, tmp_path, _config(data))
  assert not list(latest.glob('*tmp*')) and not list(best.glob('*tmp*'))


def _main(workdir, data, *extra):
  command = [
    sys.executable,
    '-m',
    'ecam_jax.main',
    '--config=configs/demo.py:variant=unet',
    f'--workdir={workdir}',
    f'--config.data.root={data}',
    '--config.data.phantom_cases=0',
    '--config.data.image_size=32',
    '--config.data.split_sizes=(1,1,1)',
    '--config.data.prepare_workers=1',
    '--config.model.base_channels=4',
    '--config.train.batch_size=8',
    '--config.train.epochs=2',
    '--config.train.log_every_steps=1',
    '--config.train.warmup_steps=0',
    '--config.train.overlay_slices=1',
    '--config.train.checkpoint_every_steps=2',
    *extra,
  ]
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    XLA_FLAGS='--xla_force_host_platform_device_count=8',
    PYTHONUNBUFFERED='1',
  )
  return subprocess.Popen(
    command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )


def _kill_when(proc, predicate) -> bool:
  """SIGKILLs `proc` as soon as `predicate()` holds; False if it ended first."""
  start = time.monotonic()
  while not predicate():
    if proc.poll() is not None:
      return False
    assert time.monotonic() - start < EVENT_TIMEOUT_S, 'the run never got there'
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=RUN_TIMEOUT_S)
  return True


def test_sigkill_anywhere_then_rerun_equals_uninterrupted(data, reference, tmp_path):
  """Real hard kills of `python -m ecam_jax.main`: right after the first best checkpoint
  appears, then during (or right after) a later save; each rerun resumes, and the last one
  ends with the uninterrupted run's parameters."""
  best, latest = tmp_path / 'checkpoints' / 'best', tmp_path / 'checkpoints' / 'latest'
  moments = [
    lambda: best.is_dir() and bool(_steps(best)),
    lambda: latest.is_dir() and any('tmp' in p.name for p in latest.iterdir()),
  ]
  killed = 0
  for moment in moments:
    proc = _main(tmp_path, data)
    killed += _kill_when(proc, moment)
  assert killed >= 1, 'no run was killed before it finished'
  proc = _main(tmp_path, data)
  output, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
  assert proc.returncode == 0, output[-3000:]
  assert 'resumed from step' in output
  ref_summary, (ref_vars, ref_meta) = reference
  variables, meta = tiny_runs.variables(tmp_path, 'latest')
  assert meta['step'] == ref_meta['step'] == ref_summary['total_steps']
  chex.assert_trees_all_close(variables, ref_vars, atol=1e-6, rtol=1e-6)


def test_changed_config_is_refused_naming_each_key(data, tmp_path):
  train.train_and_evaluate(_config(data, max_steps=2), tmp_path)
  config = _config(data, epochs=5, lr=1e-3)
  with pytest.raises(ConfigError, match=r'train\.epochs: 2 then, 5 now; train\.lr') as e:
    train.train_and_evaluate(config, tmp_path)
  assert '--resume_with_changes' in str(e.value)
  other_net = _config(data)
  other_net.model.base_channels = 8
  with pytest.raises(ConfigError, match=r'model\.base_channels: 4 then, 8 now'):
    train.train_and_evaluate(other_net, tmp_path, allow_changes=True)
  # Settings that do not change what is computed may differ at any resume.
  free = _config(data, max_steps=3, log_every_steps=3, checkpoint_every_steps=3)
  free.data.prefetch_batches = 1
  assert train.train_and_evaluate(free, tmp_path)['step'] == 3


def test_allowed_changes_continue_the_stated_schedule(data, reference, tmp_path):
  """A longer run continues: the schedule spans the new epochs from the step it stopped
  at, and a new batch size resumes at the same fraction of the epochs."""
  train.train_and_evaluate(_config(data, max_steps=3), tmp_path)
  longer = train.train_and_evaluate(_config(data, epochs=3), tmp_path, allow_changes=True)
  per_epoch = reference[0]['steps_per_epoch']
  assert longer['total_steps'] == longer['step'] == 3 * per_epoch
  records = [json.loads(x) for x in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  resumed = [r for r in records if r['kind'] == 'resume']
  assert resumed and resumed[0]['changed'] == ['train.epochs']
  lrs = {r['step']: r['lr'] for r in records if r['kind'] == 'train'}
  # The lr logged at step s is the schedule's value at s - 1 (the step being taken).
  import numpy as np

  total = 3 * per_epoch
  for s in (4, total):
    want = 2e-3 * 0.5 * (1 + np.cos(np.pi * (s - 1) / total))
    assert abs(lrs[s] - want) < 1e-9


def test_nonfinite_stop_never_checkpoints_past_the_bad_step(data, tmp_path):
  """With time-based saves due at every step (checkpoint_every_seconds=1e-9), a step whose
  loss is not finite must stop the run before any save of the state after it."""
  config = _config(data, checkpoint_every_seconds=1e-9, checkpoint_every_steps=1000)
  cache, case_splits = prepare.prepare_data(config, prepare.prepare_workdir(tmp_path))
  (case,) = case_splits['train']
  import numpy as np

  image = np.load(cache.path / 'cases' / case / 'image.npy', mmap_mode='r+')
  image[:, 3, 3] = np.nan
  image.flush()
  with pytest.raises(NonFiniteLossError, match='not finite at step 1;'):
    train.train_and_evaluate(config, tmp_path)
  latest = tmp_path / 'checkpoints' / 'latest'
  assert not latest.exists() or not _steps(latest)
  with pytest.raises(NonFiniteLossError, match='not finite at step 1;'):
    train.train_and_evaluate(config, tmp_path)  # the rerun meets the same batch again
