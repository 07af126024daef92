"""Mixed precision: bfloat16 compute with float32 parameters, optimizer state, BatchNorm
statistics and loss; outputs close to float32's; training in bf16 reaches fp32's DSC."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecam_jax import parallel, steps
from ecam_jax.configuration import load_config
from ecam_jax.models.build import abstract_variables, build_model
from ecam_jax.optim import make_optimizer
from ecam_jax.state import TrainState

import numpy_ref as ref

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(dtype):
  # CoA (the attention's softmax) and a side output in bf16; the rest of the full model
  # is convolutions, which the other tests cover, and bf16 compiles slowly on CPU.
  config = load_config(ROOT / 'configs/default.py', 'variant=unet_coa')
  config.model.use_dws = True
  config.model.base_channels = 4
  config.model.dtype = dtype
  config.data.image_size = 32
  config.train.batch_size = 8
  return config


def test_bf16_forward_is_close_to_fp32_and_outputs_are_fp32():
  x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 1))
  fp32, bf16 = build_model(_config('float32').model), build_model(_config('bfloat16').model)
  variables = ref.host_variables(abstract_variables(fp32, 32))
  a = jax.jit(fp32.apply)(variables, x)
  b = jax.jit(bf16.apply)(variables, x)
  assert b['logits'].dtype == jnp.float32 and b['side_logits'][0].dtype == jnp.float32
  err = float(jnp.linalg.norm(b['logits'] - a['logits']) / jnp.linalg.norm(a['logits']))
  assert 1e-5 < err < 5e-2, err  # bf16 arithmetic happened, and stayed close


def test_bf16_train_step_keeps_fp32_state_and_loss():
  config = _config('bfloat16')
  mesh = parallel.data_mesh(jax.devices()[:4])
  model = build_model(config.model, axis_name=parallel.AXIS)
  tx, schedule = make_optimizer(config.train, 10)
  variables = ref.host_variables(abstract_variables(model, 32))
  state = TrainState(
    step=np.zeros((), np.int32),
    params=variables['params'],
    batch_stats=variables['batch_stats'],
    opt_state=tx.init(variables['params']),
    rng=np.asarray(jax.random.key_data(jax.random.key(0))),
    skipped=np.zeros((), np.int32),
    first_nonfinite=np.full((), -1, np.int32),
  )
  state = jax.device_put(state, parallel.replicated(mesh))
  rng = np.random.default_rng(0)
  image = rng.random((8, 32, 32, 1), dtype=np.float32)
  batch = parallel.global_batch(mesh, {'image': image, 'label': (image > 0.7).astype(np.uint8)})
  state, metrics = steps.make_train_step(model, tx, schedule, config, mesh)(state, batch)
  assert metrics['loss'].dtype == jnp.float32 and bool(metrics['finite'])
  for tree in (state.params, state.batch_stats, state.opt_state):
    assert {x.dtype for x in jax.tree.leaves(tree) if x.ndim} == {jnp.dtype('float32')}
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.params, variables['params'])
  assert max(jax.tree.leaves(moved)) > 0


@pytest.mark.slow
def test_demo_trains_in_bf16_to_a_dsc_close_to_fp32(tmp_path):
  """The shrunk demo twice (~3 min on 2 cores). The two tests above cover the mechanics."""
  best = {}
  for dtype in ('float32', 'bfloat16'):
    workdir = tmp_path / dtype
    command = [
      sys.executable,
      '-m',
      'ecam_jax.main',
      '--config=configs/demo.py:variant=unet_ec',
      f'--workdir={workdir}',
      f'--config.model.dtype={dtype}',
      '--config.model.use_dws=True',
      '--config.data.phantom_cases=4',
      '--config.data.phantom_size=64',
      '--config.data.image_size=64',
      '--config.data.split_sizes=(2,1,1)',
      '--config.model.base_channels=8',
      '--config.train.batch_size=8',
      '--config.train.epochs=10',
      '--config.train.lr=4e-3',
    ]
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(x) for x in (workdir / 'metrics.jsonl').read_text().splitlines()]
    best[dtype] = max(r['dsc'] for r in records if r['kind'] == 'val')
  print(f'best validation DSC: {best}')
  assert best['bfloat16'] > best['float32'] - 0.1, best
