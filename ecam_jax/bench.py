"""Speed, FLOP/s, memory and loader rate of a config, as one JSON object.

  python -m ecam_jax.bench --config=configs/demo.py [--config.model.base_channels=16 ...]
  python -m ecam_jax.bench --config=configs/default.py --suite
  python -m ecam_jax.bench_report --config=configs/msd.py --budget_s=600   # the GPU report

Train step: the real one (augmentation, loss, optimizer; shard_map over this process's
devices) on synthetic batches, timed as the median of --steps after --warmup. FLOPs come
from XLA's cost analysis of the compiled step, the peak from a matmul measured in the
same run (float32, or bfloat16 when the model computes in bfloat16), MFU is their
ratio. Peak memory is the compiled step's: arguments + outputs + temporaries - aliased
(donated) buffers. Inference: the predict step on config.eval.batch_size slices (rounded
up to a multiple of the device count, as prediction does), EC folded and unfolded. The
loader rate needs data (a config with data.root, or the demo's phantom, prepared into
--workdir); otherwise it is null. --notime only compiles: FLOPs,
peak memory and compile seconds of configs too large to run here (the other keys null).
"""

import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ecam_jax import configuration, parallel, steps
from ecam_jax.errors import ConfigError
from ecam_jax.models import registry
from ecam_jax.models.build import build_model, has_ec_blocks
from ecam_jax.models.layers import fold_ec
from ecam_jax.optim import make_optimizer
from ecam_jax.state import create_train_state

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
flags.DEFINE_integer('steps', 10, 'Timed train steps (and inference batches).')
flags.DEFINE_integer('warmup', 2, 'Untimed steps first.')
flags.DEFINE_bool('suite', False, 'A table over image sizes, batch sizes and variants.')
flags.DEFINE_list('sizes', None, 'Suite image sizes (default: 128,256 on CPU; 512,1024 else).')
flags.DEFINE_list('batches', ['4', '8'], 'Suite global batch sizes.')
flags.DEFINE_list('variants', ['unet', 'ec_cam_unet'], 'Suite variants.')
flags.DEFINE_list('impls', ['fused'], 'Suite SC attention implementations (fused,chunked,naive).')
flags.DEFINE_list('remats', ['false', 'true'], 'Suite model.remat values.')
flags.DEFINE_bool('loader', True, 'Measure the data loader (needs the config data).')
flags.DEFINE_bool(
  'time', True, 'Run and time the steps; --notime only compiles (FLOPs, memory, compile s).'
)
flags.DEFINE_string('workdir', None, 'Where the loader prepares its cache (default: a temp dir).')

flags.mark_flag_as_required('config')


def _median_ms(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def matmul_peak(dtype: Any, device: Any) -> float:
  """FLOP/s of a large square matmul on one device, measured now (median of 10)."""
  n = 2048 if device.platform == 'cpu' else 8192
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.device_put(jax.random.normal(k, (n, n), dtype), device) for k in keys)
  f = jax.jit(jnp.matmul)
  ms = _median_ms(lambda: f(a, b), 10, 2)
  return 2 * n**3 / (ms / 1e3)


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get('flops', 0.0)) if analysis else 0.0


def _peak_memory(compiled) -> int | None:
  m = compiled.memory_analysis()
  if m is None:
    return None
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
  return int(total - m.alias_size_in_bytes)


def _synthetic_batch(config, mesh, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Random images with a blob-shaped label: never zeros (they can run faster); padded
  to the device count as training pads it, the padding rows marked."""
  batch = config.train.batch_size
  b = parallel.fit_batch(batch, mesh, 'config.train.batch_size')
  s = config.data.image_size
  image = rng.random((b, s, s, config.model.in_channels), dtype=np.float32)
  yy, xx = np.mgrid[:s, :s] / s
  label = ((yy - 0.5) ** 2 + (xx - 0.4) ** 2 < 0.02).astype(np.uint8)
  return {
    'image': image,
    'label': np.broadcast_to(label[None, ..., None], (b, s, s, 1)).copy(),
    'valid': np.arange(b) < batch,
  }


def bench_train(
  config: ml_collections.ConfigDict, mesh, timed: bool, steps_timed: int = 10, warmup: int = 2
) -> dict[str, Any]:
  """The train step of `config` on `mesh`: FLOPs per image, peak memory, compile seconds,
  and (timed) the median step time of `steps_timed` steps after `warmup`."""
  model = build_model(config.model, axis_name=parallel.AXIS)
  tx, schedule = make_optimizer(config.train, 1000)

  def init():
    return create_train_state(model, tx, config.seed, config.data.image_size)

  batch = _synthetic_batch(config, mesh, np.random.default_rng(0))
  if timed:
    state = jax.jit(init, out_shardings=parallel.replicated(mesh))()
    batch = jax.device_put(batch, parallel.batch_sharded(mesh))
  else:  # shapes only: nothing is allocated or run
    state = parallel.abstract(jax.eval_shape(init), parallel.replicated(mesh))
    batch = parallel.abstract(batch, parallel.batch_sharded(mesh))
  step = steps.make_train_step(model, tx, schedule, config, mesh)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  devices = mesh.devices.size
  out = {
    # Per row of the (padded) batch; images/s and achieved FLOP/s count real rows only.
    'flops_per_image': _flops(compiled) * devices / batch['image'].shape[0],
    'peak_memory_bytes': _peak_memory(compiled),
    'compile_s': compile_s,
  }
  if not timed:
    return out
  holder = [state]

  def one_step():
    holder[0], metrics = compiled(holder[0], batch)
    return metrics['loss']

  ms = _median_ms(one_step, steps_timed, warmup)
  return out | {
    'train_step_ms': ms,
    'images_per_s': config.train.batch_size / (ms / 1e3),
    'achieved_flops': out['flops_per_image'] * config.train.batch_size / (ms / 1e3),
    'variables': jax.device_get(holder[0].variables()),
  }


def bench_infer(
  config: ml_collections.ConfigDict,
  mesh,
  variables: dict,
  folded: bool,
  repeats: int,
  warmup: int,
) -> float:
  """ms per slice of the predict step on a batch of config.eval.batch_size slices, rounded
  up to fit the mesh (`parallel.fit_batch`: the batch prediction uses), median of
  `repeats` runs after `warmup`."""
  model = build_model(config.model, folded=folded)
  if folded:
    variables = fold_ec(variables, config.model.bn_epsilon)
  variables = jax.device_put(variables, parallel.replicated(mesh))
  batch = parallel.fit_batch(config.eval.batch_size, mesh, 'config.eval.batch_size')
  s = config.data.image_size
  images = np.random.default_rng(1).random((batch, s, s, config.model.in_channels), np.float32)
  images = jax.device_put(images, parallel.batch_sharded(mesh))
  predict = steps.make_predict_step(model, mesh, config.eval.tta_flip)
  return _median_ms(lambda: predict(variables, images), repeats, warmup) / batch


def bench_loader(config: ml_collections.ConfigDict, workdir: str) -> float | None:
  """Slices/s from the preprocessing cache through the train iterator (host only)."""
  from ecam_jax.data import pipeline
  from ecam_jax.data.prepare import prepare_data, prepare_workdir

  try:
    cache, case_splits = prepare_data(config, prepare_workdir(workdir))
  except (ConfigError, ValueError) as e:
    print(f'loader not measured: {e}', flush=True)
    return None
  iterator = pipeline.train_iterator(cache, case_splits['train'], config, seed=0)
  try:
    next(iterator)
    return pipeline.measure_slices_per_second(iterator, 200)
  finally:
    pipeline.close_iterator(iterator)


def bench(
  config: ml_collections.ConfigDict,
  workdir: str | None,
  loader: bool,
  timed: bool = True,
  repeats: int = 10,
  warmup: int = 2,
) -> dict:
  """Every number of the module docstring for one config; timings are medians of
  `repeats` runs after `warmup`."""
  configuration.check(config)
  mesh = parallel.data_mesh(jax.local_devices())
  out = bench_train(config, mesh, timed, repeats, warmup)
  timing_keys = ('train_step_ms', 'images_per_s', 'achieved_flops', 'peak_flops', 'mfu')
  out |= {k: out.get(k) for k in timing_keys}
  out |= {'infer_ms_per_slice': None, 'infer_ms_per_slice_unfolded': None}
  out['loader_slices_per_s'] = None
  if timed:
    variables = out.pop('variables')
    dtype = jnp.dtype(config.model.dtype)
    out['peak_flops'] = matmul_peak(dtype, jax.local_devices()[0]) * mesh.devices.size
    out['mfu'] = out['achieved_flops'] / out['peak_flops']
    out['infer_ms_per_slice'] = bench_infer(
      config, mesh, variables, has_ec_blocks(config.model), repeats, warmup
    )
    out['infer_ms_per_slice_unfolded'] = bench_infer(
      config, mesh, variables, False, repeats, warmup
    )
  if loader:
    with tempfile.TemporaryDirectory() as tmp:
      out['loader_slices_per_s'] = bench_loader(config, workdir or tmp)
  out['device'] = f'{mesh.devices.size} x {jax.local_devices()[0].device_kind}'
  out['config'] = {
    'variant': config.model.variant,
    'base_channels': config.model.get('base_channels'),
    'image_size': config.data.image_size,
    'batch_size': config.train.batch_size,
    'dtype': config.model.dtype,
    'remat': config.model.remat,
    'attention_impl': config.model.get('attention_impl'),
  }
  return out


def _suite_rows(config: ml_collections.ConfigDict) -> list[dict]:
  on_cpu = jax.local_devices()[0].platform == 'cpu'
  sizes = [int(s) for s in (FLAGS.sizes or (['128', '256'] if on_cpu else ['512', '1024']))]
  rows = []
  changed = registry.changed_options(config.model)  # e.g. the demo's base width
  for variant in FLAGS.variants:
    for size in sizes:
      for batch, remat, impl in itertools.product(
        (int(b) for b in FLAGS.batches), (r == 'true' for r in FLAGS.remats), FLAGS.impls
      ):
        c = ml_collections.ConfigDict(config.to_dict())
        registry.apply_variant(c, variant)
        c.model.update({k: v for k, v in changed.items() if k in c.model})
        c.data.image_size, c.train.batch_size, c.model.remat = size, batch, remat
        if 'attention_impl' in c.model:
          c.model.attention_impl = impl
        row = bench(c, None, False, FLAGS.time, FLAGS.steps, FLAGS.warmup)
        rows.append(row)
        print(json.dumps(row), flush=True)
  return rows


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
  return '-' if value is None else format(value / scale, spec)


def _table(rows: list[dict]) -> str:
  head = (
    '| variant | size | batch | remat | SC | step ms | img/s | GFLOP/img | MFU | peak MB '
    '| infer ms/slice (folded / unfolded) | compile s |'
  )
  lines = [head, '|' + '---|' * 12]
  for r in rows:
    c = r['config']
    lines.append(
      f'| {c["variant"]} | {c["image_size"]} | {c["batch_size"]} | {c["remat"]} | '
      f'{c["attention_impl"]} | {_fmt(r["train_step_ms"], ".0f")} | '
      f'{_fmt(r["images_per_s"], ".1f")} | {_fmt(r["flops_per_image"], ".1f", 1e9)} | '
      f'{_fmt(r["mfu"], ".2f")} | {_fmt(r["peak_memory_bytes"], ".0f", 2**20)} | '
      f'{_fmt(r["infer_ms_per_slice"], ".1f")} / {_fmt(r["infer_ms_per_slice_unfolded"], ".1f")} '
      f'| {r["compile_s"]:.0f} |'
    )
  return '\n'.join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = FLAGS.config
  if FLAGS.suite:
    print(_table(_suite_rows(config)))
  else:
    out = bench(config, FLAGS.workdir, FLAGS.loader, FLAGS.time, FLAGS.steps, FLAGS.warmup)
    print(json.dumps(out))


if __name__ == '__main__':
  app.run(main, flags_parser=configuration.parse_flags)
