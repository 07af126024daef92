"""The bench: one tiny timed run through its CLI (the only benchmark in the suite),
compile-only numbers in process, and inference timing on device counts that do not divide
config.eval.batch_size."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from ecam_jax import bench, parallel
from ecam_jax.configuration import load_config
from ecam_jax.models.build import build_model, init_variables

ROOT = pathlib.Path(__file__).resolve().parents[1]
KEYS = (
  'train_step_ms',
  'images_per_s',
  'flops_per_image',
  'achieved_flops',
  'peak_flops',
  'mfu',
  'peak_memory_bytes',
  'compile_s',
  'infer_ms_per_slice',
  'infer_ms_per_slice_unfolded',
)


def test_bench_cli_prints_every_key_and_they_agree(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  cmd = [
    sys.executable,
    '-m',
    'ecam_jax.bench',
    '--config=configs/demo.py:variant=unet_ec',  # what is measured, not the model, is tested
    '--config.model.base_channels=4',
    '--config.data.image_size=32',
    '--config.train.batch_size=4',
    '--noloader',  # the loader's rate: tests/test_bench_report.py measures it
    '--config.eval.batch_size=4',
    '--steps=2',
    '--warmup=1',
    f'--workdir={tmp_path / "w"}',
  ]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert set(KEYS) <= set(out) and out['loader_slices_per_s'] is None
  assert all(out[k] > 0 for k in KEYS), out
  assert out['images_per_s'] == pytest.approx(4 / (out['train_step_ms'] / 1e3))
  assert out['achieved_flops'] == pytest.approx(out['flops_per_image'] * out['images_per_s'])
  assert out['mfu'] == pytest.approx(out['achieved_flops'] / out['peak_flops'])
  assert out['config'] == {
    'variant': 'unet_ec',
    'base_channels': 4,
    'image_size': 32,
    'batch_size': 4,
    'dtype': 'float32',
    'remat': False,
    'attention_impl': 'fused',
  }
  assert out['device'].startswith('2 x ')


def _compile_only(**model):
  # The plain U-Net: what is measured, not the model, is tested (remat per level of every
  # network: tests/test_networks.py); its two compiles take half an EC U-Net's.
  config = load_config(ROOT / 'configs/demo.py', 'variant=unet')
  config.model.base_channels = 4
  config.data.image_size = 64
  config.train.batch_size = 8
  config.model.update(model)
  return bench.bench(config, None, loader=False, timed=False)


def test_compile_only_reports_flops_and_memory_and_remat_saves_memory():
  plain, remat = _compile_only(), _compile_only(remat=True)
  for out in plain, remat:
    assert out['flops_per_image'] > 0 and out['peak_memory_bytes'] > 0
    assert out['train_step_ms'] is None and out['mfu'] is None
  # Rematerialization recomputes the forward pass in the backward one: more FLOPs,
  # less memory held between them.
  assert remat['flops_per_image'] > plain['flops_per_image']
  assert remat['peak_memory_bytes'] < plain['peak_memory_bytes']
  table = bench._table([plain, remat])
  assert table.count('\n') == 3 and '| unet | 64 | 8 | True | fused | - |' in table


@pytest.mark.parametrize('devices', [3, 5])
def test_inference_timing_runs_on_a_device_count_that_does_not_divide_the_batch(devices):
  config = load_config(ROOT / 'configs/demo.py', 'variant=unet')
  config.model.base_channels = 4
  config.data.image_size = 32
  config.eval.batch_size = 4  # rounded up to 6 or 5 slices
  variables = jax.device_get(init_variables(build_model(config.model), 0, 32))
  mesh = parallel.data_mesh(jax.devices()[:devices])
  ms = bench.bench_infer(config, mesh, variables, folded=False, repeats=1, warmup=0)
  assert ms > 0
