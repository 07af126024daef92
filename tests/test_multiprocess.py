"""Several local JAX processes (fake CPU devices) running ecam_jax.main together: the
same training as one process; a killed process ends the job; a killed job resumes."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from ecam_jax import checkpoint, parallel
from ecam_jax.configuration import load_config
from ecam_jax.models.build import abstract_variables, build_model

pytestmark = pytest.mark.multiprocess
ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = 'configs/demo.py:variant=unet'
SMALL = [
  '--config.data.phantom_cases=3',
  '--config.data.phantom_size=64',
  '--config.data.image_size=32',
  '--config.data.split_sizes=(1,1,1)',
  '--config.data.prepare_workers=1',
  '--config.model.base_channels=4',
  '--config.train.batch_size=4',
  '--config.train.log_every_steps=1',
  '--config.train.overlay_slices=1',
  '--config.train.epochs=4',
  '--config.train.checkpoint_every_steps=3',
  '--heartbeat_timeout_seconds=10',
]  # every run here compiles the same programs: JAX's compilation cache serves them


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(processes: int, devices: int, workdir, *flags) -> list[subprocess.Popen]:
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
    PYTHONUNBUFFERED='1',
  )
  command = [sys.executable, '-m', 'ecam_jax.main', f'--config={CONFIG}', f'--workdir={workdir}']
  command += SMALL + list(flags)
  port = _free_port()
  procs = []
  for i in range(processes):
    extra = []
    if processes > 1:
      extra = [
        f'--coordinator_address=127.0.0.1:{port}',
        f'--num_processes={processes}',
        f'--process_id={i}',
      ]
    log_path = pathlib.Path(workdir).parent / f'{pathlib.Path(workdir).name}.{i}.log'
    with open(log_path, 'w') as log:  # the child keeps its own copy of the descriptor
      procs.append(subprocess.Popen(command + extra, cwd=ROOT, env=env, stdout=log, stderr=log))
  return procs


# A run here takes 20-60 s on a quiet 2-core machine and several times that while the
# suite's other worker compiles. The tests wait on what the processes report (exit codes,
# checkpoint folders, metrics lines), with these generous limits so that a busy machine
# does not fail them; only a hung run reaches a limit.
RUN_TIMEOUT_S = 900
EVENT_TIMEOUT_S = 900


def _wait(procs, timeout=RUN_TIMEOUT_S) -> list[int]:
  return [p.wait(timeout=timeout) for p in procs]


def _log(workdir, i=0) -> str:
  return (pathlib.Path(workdir).parent / f'{pathlib.Path(workdir).name}.{i}.log').read_text()


def _latest(workdir):
  config = load_config(ROOT / 'configs/demo.py', 'variant=unet')
  config.model.base_channels = 4
  model = build_model(config.model)
  sharding = parallel.replicated(parallel.data_mesh(jax.local_devices()))
  target = parallel.abstract(abstract_variables(model, 32), sharding)
  return checkpoint.restore_variables(workdir, 'latest', target)


def _wait_for(predicate, procs, timeout=EVENT_TIMEOUT_S):
  start = time.monotonic()
  while not predicate():
    if any(p.poll() is not None for p in procs):
      raise AssertionError('a process ended before the condition was met')
    if time.monotonic() - start > timeout:
      raise AssertionError('timed out')
    time.sleep(0.2)


def test_two_processes_train_like_one_and_resume_elastically(tmp_path):
  """A 1-process x 4-device run stopped after 3 steps is continued twice to step 6: as it
  was, and elastically as 2 processes x 2 devices. Both reach the same parameters and
  BatchNorm statistics (pipeline shards at a position mid-epoch, global batch, BN and
  gradient reductions across processes) and log the same losses and gradient norms,
  process 0 alone writing them. (A 2-process run from step 0, resumed as 2 processes:
  test_a_killed_process_ends_the_others_and_the_job_resumes.)"""
  one, two = tmp_path / 'one', tmp_path / 'two'
  # Steps of ~1e-3: a wrong update would show. Adam's eps is raised from 1e-8 so that a
  # weight whose gradient is at rounding level (gloo sums in another order than one
  # process does) is not blown up to a full step of noisy sign: that is Adam's behaviour,
  # not the parallel path's, and it made the comparison depend on the initial weights.
  flags = (
    '--config.train.warmup_steps=0',
    '--config.train.lr=1e-3',
    '--config.train.adam_eps=1e-3',
  )
  assert _wait(_start(1, 4, one, '--config.train.max_steps=3', *flags)) == [0], _log(one)
  shutil.copytree(one, two)
  assert _wait(_start(1, 4, one, '--config.train.max_steps=6', *flags)) == [0], _log(one)
  codes = _wait(_start(2, 2, two, '--config.train.max_steps=6', *flags))
  assert codes == [0, 0], _log(two, 0)[-3000:] + _log(two, 1)[-3000:]
  assert 'resumed from step 3 ' in _log(two, 0)
  a, meta_a = _latest(one)
  b, meta_b = _latest(two)
  assert meta_a['step'] == meta_b['step'] == 6
  # Rounding differs across processes (gloo sums in another order): a weight whose
  # gradient is at rounding level can move by a fraction of a step; the rest agree far
  # closer (the mean below).
  chex.assert_trees_all_close(b['params'], a['params'], atol=2e-4, rtol=0)
  diffs = [
    np.abs(x - y).ravel()
    for x, y in zip(jax.tree.leaves(b['params']), jax.tree.leaves(a['params']), strict=True)
  ]
  assert np.concatenate(diffs).mean() < 1e-6  # 0.1% of one step on average
  chex.assert_trees_all_close(b['batch_stats'], a['batch_stats'], atol=1e-4, rtol=1e-3)
  records = [json.loads(x) for x in (two / 'metrics.jsonl').read_text().splitlines()]
  ones = [json.loads(x) for x in (one / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records] == [r['step'] for r in ones]  # process 0 writes once
  # A gradient reduced twice would be 2x here; rounding moves the norm by ~1e-3 at most.
  for key, rtol in (('loss', 1e-4), ('grad_norm', 2e-3), ('dsc', 1e-3)):
    got, want = ([r[key] for r in rs if r['kind'] == 'train'] for rs in (records, ones))
    assert len(got) == 6
    chex.assert_trees_all_close(got, want, rtol=rtol)


def test_a_killed_process_ends_the_others_and_the_job_resumes(tmp_path):
  """Process 1 of a 2-process run is SIGKILLed after the first checkpoint (a lost node):
  process 0 stops with an error instead of hanging; the job rerun through the launcher, as
  a user would, resumes from that checkpoint."""
  workdir = tmp_path / 'run'
  procs = _start(2, 2, workdir)
  latest = workdir / 'checkpoints' / 'latest'
  try:
    _wait_for(lambda: latest.exists() and any(p.name.isdigit() for p in latest.iterdir()), procs)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    code = procs[0].wait(timeout=RUN_TIMEOUT_S)
    elapsed = time.monotonic() - killed
  finally:
    for p in procs:
      p.kill()
    _wait(procs)
  assert code != 0
  assert elapsed < 90, f'process 0 took {elapsed:.0f} s to stop'
  saved = max(int(p.name) for p in latest.iterdir() if p.name.isdigit())
  # The rerun goes through the launcher, as a user would run it.
  command = [
    'bash',
    'launch/local_multiprocess.sh',
    '-n',
    '2',
    '-d',
    '2',
    '--port',
    str(_free_port()),
    '--',
    f'--config={CONFIG}',
    f'--workdir={workdir}',
    *SMALL,
  ]
  env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED='1')
  rerun = subprocess.run(
    command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
  )
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f'resumed from step {saved} ' in rerun.stdout + rerun.stderr
  _, meta = _latest(workdir)
  assert meta['step'] > saved
