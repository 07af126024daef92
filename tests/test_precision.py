"""Mixed precision: bfloat16 outputs close to float32's; training in bf16 reaches fp32's
DSC. (A bf16 train step keeping float32 parameters, optimizer state, BatchNorm statistics
and loss: tests/test_config_choices.py's coa_naive_bf16_side, with a side output.)"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from ecam_jax.configuration import load_config
from ecam_jax.models.build import abstract_variables, build_model

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
