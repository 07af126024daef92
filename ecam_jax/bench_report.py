"""The GPU report: every number the README's GPU section holds, from one command, in the
order a few minutes of a lent GPU should buy them.

  python -m ecam_jax.bench_report --config=configs/msd.py --out=DIR [--budget_s=600]
      [--networks=ec_cam_unet,unet] [--steps=10]

For whatever devices it runs on, in this order, each item started only while the time
budget lasts (the items left are listed as skipped):
1. the matmul peak in float32 and bfloat16 (one device, measured now);
2. the config's variant (`ec_cam_unet` unless `:variant=` says otherwise) in bfloat16: the
   train step at the best batch of 4/8/16/32 per device (remat off; remat on where remat
   off ran out of memory before 32), with step time, images/s, MFU against the bfloat16
   peak, peak memory and compile time;
3. a volume of SIZE x SIZE x 100 end to end at the config's base width, with where its
   time goes (Predictor.times);
4. a `jax.profiler` trace of a few of those train steps, and the ops that took most time;
5. the loader's slices/s from a cache of the phantom against the images/s the device
   consumes;
6. that variant in float32, then every other registered network in bfloat16 and float32.
A batch that does not fit (the compiled step's memory over the device's limit, or an
out-of-memory error) ends that network's batch search. Writes DIR/report.json and
DIR/report.md (the Markdown the README's GPU section embeds).
"""

import collections
import datetime
import glob
import json
import pathlib
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from ecam_jax import bench, configuration, parallel
from ecam_jax.atomic import write_json_atomic, write_text_atomic
from ecam_jax.models import registry

FLAGS = flags.FLAGS  # bench's flags (--config, --steps, ...) and this module's
BATCHES = (4, 8, 16, 32)  # per device


class Budget:
  """Seconds left of the report's time budget; items past it are recorded as skipped."""

  def __init__(self, seconds: float):
    self.end = time.perf_counter() + seconds
    self.skipped: list[str] = []

  def allows(self, item: str) -> bool:
    if time.perf_counter() < self.end:
      return True
    self.skipped.append(item)
    return False


def _out_of_memory(error: Exception) -> bool:
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text or 'Out of memory' in text or 'out of memory' in text


def _memory_limit(device) -> int | None:
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  return (stats or {}).get('bytes_limit')


def network_config(base: ml_collections.ConfigDict, variant: str, dtype: str, remat: bool):
  """`base` (its data, eval and train keys, its width where the network has one) for
  `variant` in `dtype` with `remat`."""
  config = ml_collections.ConfigDict(base.to_dict())
  changed = registry.changed_options(base.model)
  registry.apply_variant(config, variant)
  config.model.update({k: v for k, v in changed.items() if k in config.model})
  config.model.dtype, config.model.remat = dtype, remat
  return config


def best_batch(
  config: ml_collections.ConfigDict, mesh, steps: int, budget: Budget, batches=BATCHES
) -> dict:
  """The train step at each per-device batch of `batches` until one does not fit: the row
  of the most images/s, with what each batch gave ('tried'; 'oom' for one that did not
  fit)."""
  devices, limit = mesh.devices.size, _memory_limit(mesh.devices.flat[0])
  tried, best = {}, None
  for per_device in batches:
    if not budget.allows(f'{config.model.variant} {config.model.dtype} batch {per_device}'):
      break
    config.train.batch_size = per_device * devices
    try:
      if limit:  # a device that says its memory: compile first, run only what fits
        needs = bench.bench_train(config, mesh, timed=False)['peak_memory_bytes']
        if needs and needs > limit:
          tried[per_device] = 'oom'
          break
      row = bench.bench_train(config, mesh, timed=True, steps_timed=steps, warmup=2)
    except Exception as e:  # noqa: BLE001 - only an out-of-memory error ends the search
      if not _out_of_memory(e):
        raise
      tried[per_device] = 'oom'
      break
    row.pop('variables')
    tried[per_device] = row['images_per_s']
    if best is None or row['images_per_s'] > best['images_per_s']:
      best = row | {'batch_per_device': per_device}
  return {'best': best, 'tried': tried}


def train_rows(
  base: ml_collections.ConfigDict,
  variant: str,
  dtype: str,
  mesh,
  peak: float,
  steps: int,
  budget: Budget,
  batches=BATCHES,
) -> list[dict]:
  """The best-batch row of `variant` in `dtype` with remat off, and with remat on when remat
  off ran out of memory before the largest batch."""
  rows = []
  for remat in (False, True):
    config = network_config(base, variant, dtype, remat)
    found = best_batch(config, mesh, steps, budget, batches)
    if found['best'] is not None:
      best = found['best']
      rows.append(
        {
          'network': config.model.name,
          'variant': variant,
          'dtype': dtype,
          'remat': remat,
          'batch_per_device': best['batch_per_device'],
          'step_ms': best['train_step_ms'],
          'images_per_s': best['images_per_s'],
          'gflop_per_image': best['flops_per_image'] / 1e9,
          'mfu': best['achieved_flops'] / peak,
          'peak_memory_mb': None
          if best['peak_memory_bytes'] is None
          else best['peak_memory_bytes'] / 2**20,
          'compile_s': best['compile_s'],
          'tried': found['tried'],
        }
      )
    if 'oom' not in found['tried'].values():
      break
  return rows


def top_ops(trace_dir: str, count: int = 10) -> list[dict]:
  """The ops of a jax.profiler trace by total time: a device's 'XLA Ops' line (GPU, TPU),
  else the CPU client's threads; [{'name', 'ms', 'share'}]."""
  from jax.profiler import ProfileData

  totals: collections.Counter = collections.Counter()
  for path in glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True):
    planes = list(ProfileData.from_file(path).planes)
    device_lines = [
      line
      for plane in planes
      if plane.name.startswith('/device:')
      for line in plane.lines
      if line.name == 'XLA Ops'
    ]
    lines = device_lines or [
      line for plane in planes for line in plane.lines if 'PjRtCpuClient' in line.name
    ]
    for line in lines:
      for event in line.events:
        if not event.name.startswith(('end: ', 'ThreadpoolListener', 'ThunkExecutor')):
          totals[event.name] += event.duration_ns
  whole = sum(totals.values()) or 1
  return [
    {'name': name, 'ms': ns / 1e6, 'share': ns / whole} for name, ns in totals.most_common(count)
  ]


def profile(base: ml_collections.ConfigDict, row: dict, mesh, steps: int = 3) -> dict:
  """A trace of `steps` train steps of the headline row's config, and its top ops."""
  config = network_config(base, row['variant'], row['dtype'], row['remat'])
  config.train.batch_size = row['batch_per_device'] * mesh.devices.size
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      bench.bench_train(config, mesh, timed=True, steps_timed=steps, warmup=1)
    return {'variant': row['variant'], 'steps': steps, 'top_ops': top_ops(tmp)}


def volume(
  base: ml_collections.ConfigDict,
  size: int,
  slices: int,
  image_size: int | None = None,
  fold: bool = True,
) -> dict:
  """A phantom volume of size x size x slices segmented end to end (Predictor.segment_file)
  by the config's network at `image_size` (default: size) with freshly initialized
  weights (the time does not depend on them), EC folded or not, after one untimed call
  that compiles: the seconds, each host stage's (Predictor.times: what the host did or
  waited for) and each device step's alone (Predictor.device_seconds)."""
  import nibabel as nib

  from ecam_jax.data import phantom, volumes
  from ecam_jax.infer import Predictor
  from ecam_jax.models.build import build_model, init_variables

  config = network_config(base, base.model.variant, base.model.dtype, False)
  config.data.image_size = image_size = image_size or size
  variables = jax.jit(lambda: init_variables(build_model(config.model), 0, image_size))()
  with tempfile.TemporaryDirectory() as tmp:
    source = phantom.volume_file(tmp, size, slices)
    predictor = Predictor(config, tmp, variables=variables, fold=fold)
    start = time.perf_counter()
    predictor.segment_file(source, pathlib.Path(tmp) / 'warm.nii.gz')
    first = time.perf_counter() - start
    predictor.times.reset()
    start = time.perf_counter()
    predictor.segment_file(source, pathlib.Path(tmp) / 'mask.nii.gz')
    seconds = time.perf_counter() - start
    image = nib.load(source)
    case = volumes.canonical_case([np.asanyarray(image.dataobj)], image.affine, config.data)
    device = predictor.device_seconds(case)
  return {
    'shape': f'{size}x{size}x{slices}',
    'image_size': image_size,
    'variant': config.model.variant,
    'base_channels': config.model.get('base_channels'),
    'dtype': config.model.dtype,
    'ec_folded': predictor.folded,
    'batch_size': config.eval.batch_size,
    'seconds': seconds,
    'first_call_s': first,
    'stages': predictor.times.report(),
    'device_stages': device,
  }


def loader(base: ml_collections.ConfigDict, size: int, device_images_per_s: float | None) -> dict:
  """Slices/s of the train iterator from a cache of a 4-case phantom at `size`."""
  config = ml_collections.ConfigDict(base.to_dict())
  config.data.update(
    root='', phantom_cases=4, phantom_size=size, image_size=size, split_sizes=(2, 1, 1)
  )
  with tempfile.TemporaryDirectory() as tmp:
    rate = bench.bench_loader(config, tmp)
  return {
    'slices_per_s': rate,
    'device_images_per_s': device_images_per_s,
    'keeps_up': None
    if rate is None or device_images_per_s is None
    else rate >= device_images_per_s,
  }


def report(
  base: ml_collections.ConfigDict,
  out_dir: str | pathlib.Path,
  budget_s: float = 600.0,
  variants: list[str] | None = None,
  steps: int = 10,
  slices: int = 100,
  batches=BATCHES,
  dtypes: tuple[str, ...] = ('bfloat16', 'float32'),
) -> dict:
  """Every item of the module docstring that the budget allows, written to
  OUT_DIR/report.{json,md}. `variants`: the networks' variants (default: each registered
  network's first preset, `ec_cam_unet` for the U-Net); `steps` timed per train step;
  `slices` of the volume; `batches` per device to try; `dtypes` of the train rows (the
  first is the headline row's, the one the volume, profile and loader follow)."""
  budget = Budget(budget_s)
  mesh = parallel.data_mesh(jax.local_devices())
  device = jax.local_devices()[0]
  size = int(base.data.image_size)
  variants = variants or _default_variants()
  headline_variant = base.model.variant
  out: dict[str, Any] = {
    'date': datetime.date.today().isoformat(),
    'jax': jax.__version__,
    'backend': f'{device.platform} {device.client.platform_version}',
    'devices': f'{mesh.devices.size} x {device.device_kind}',
    'image_size': size,
    'budget_s': budget_s,
    'peak_flops': {
      name: bench.matmul_peak(jnp.dtype(name), device) * mesh.devices.size
      for name in ('float32', 'bfloat16')
    },
    'train': [],
  }

  def rows(variant: str, dtype: str) -> list[dict]:
    peak = out['peak_flops'][dtype]
    return train_rows(base, variant, dtype, mesh, peak, steps, budget, batches)

  out['train'] += rows(headline_variant, dtypes[0])
  headline = out['train'][0] if out['train'] else None
  if budget.allows('volume'):
    out['volume'] = volume(base, size, slices)
  if headline and budget.allows('profile'):
    out['profile'] = profile(base, headline, mesh)
  if budget.allows('loader'):
    out['loader'] = loader(base, size, headline and headline['images_per_s'])
  rest = [(headline_variant, d) for d in dtypes[1:]]
  rest += [(v, d) for d in dtypes for v in variants if v != headline_variant]
  for variant, dtype in rest:
    if budget.allows(f'{variant} {dtype}'):
      out['train'] += rows(variant, dtype)
  out['skipped'] = budget.skipped
  out_dir = pathlib.Path(out_dir)
  write_json_atomic(out_dir / 'report.json', out)
  write_text_atomic(out_dir / 'report.md', markdown(out))
  return out


def _default_variants() -> list[str]:
  found = []
  for name, entry in registry.NETWORKS.items():
    found.append('ec_cam_unet' if name == 'ecam_unet' else next(iter(entry.presets)))
  return found


TRAIN_HEADER = (
  '| network | dtype | remat | batch/device | step ms | images/s | GFLOP/image | MFU '
  '| peak memory MB | compile s |'
)


def _num(value, spec: str) -> str:
  return '–' if value is None else format(value, spec)


def markdown(out: dict) -> str:
  """The report as the README's GPU section shows it."""
  lines = [
    f'Measured {out["date"]} on {out["devices"]} ({out["backend"]}, jax {out["jax"]}), '
    f'{out["image_size"]}x{out["image_size"]}; `python -m ecam_jax.bench --report`. Matmul '
    f'peak: {out["peak_flops"]["float32"] / 1e12:.1f} TFLOP/s float32, '
    f'{out["peak_flops"]["bfloat16"] / 1e12:.1f} TFLOP/s bfloat16 (measured in the run).',
    '',
    TRAIN_HEADER,
    '|' + '---|' * 10,
  ]
  for r in out['train']:
    lines.append(
      f'| {r["variant"]} | {r["dtype"]} | {r["remat"]} | {r["batch_per_device"]} | '
      f'{r["step_ms"]:.1f} | {r["images_per_s"]:.1f} | {r["gflop_per_image"]:.1f} | '
      f'{r["mfu"]:.2f} | {_num(r["peak_memory_mb"], ".0f")} | {r["compile_s"]:.0f} |'
    )
  if 'volume' in out:
    v = out['volume']
    stages = ', '.join(f'{k} {s:.2f}' for k, s in v['stages'].items() if k != 'total')
    device = ', '.join(f'{k.replace("_", " ")} {s:.2f}' for k, s in v['device_stages'].items())
    lines += [
      '',
      f'Volume {v["shape"]} end to end ({v["variant"]}, base {v["base_channels"]}, {v["dtype"]}): '
      f'**{v["seconds"]:.2f} s** (first call, compiling: {v["first_call_s"]:.1f} s). '
      f'Seconds per host stage: {stages}. Each device step alone: {device}.',
    ]
  if 'loader' in out:
    lo = out['loader']
    lines += [
      '',
      f'Loader: {_num(lo["slices_per_s"], ".0f")} slices/s from the cache; the device '
      f'consumes {_num(lo["device_images_per_s"], ".0f")} images/s (the first row above).',
    ]
  if 'profile' in out:
    p = out['profile']
    ops = '; '.join(f'{o["name"]} {100 * o["share"]:.0f}%' for o in p['top_ops'][:5])
    lines += ['', f'Profile of {p["steps"]} train steps ({p["variant"]}), top ops: {ops}.']
  if out['skipped']:
    lines += [
      '',
      f'Not measured within the {out["budget_s"]:.0f} s budget: ' + ', '.join(out['skipped']) + '.',
    ]
  return '\n'.join(lines) + '\n'


flags.DEFINE_string('out', 'bench_report', 'Where report.json and report.md go.')
flags.DEFINE_float('budget_s', 600.0, 'Seconds; the items start in order while it lasts.')
flags.DEFINE_list('networks', [], "Variants to measure (default: each network's first).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  out = report(FLAGS.config, FLAGS.out, FLAGS.budget_s, FLAGS.networks or None, FLAGS.steps)
  print(markdown(out))
  print(json.dumps({'report': str(pathlib.Path(FLAGS.out) / 'report.json')}))


if __name__ == '__main__':
  app.run(main, flags_parser=configuration.parse_flags)
