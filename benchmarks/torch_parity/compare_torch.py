"""JAX vs PyTorch on this CPU, side by side: runs the two benchmarks alternately and prints a
markdown table of medians, the ratios JAX / PyTorch, and one JSON line.

  .venv/bin/python benchmarks/torch_parity/compare_torch.py [--rounds 3] [--skip-jax]

Each round runs, as subprocesses and one at a time, `python -m ecam_jax.bench` (JAX
interpreter) and benchmarks/torch_parity/torch_bench.py (PyTorch interpreter) once per
memory format (channels_last, contiguous); the order rotates from round to round so that a
drift in the machine's speed does not favour one side. Each run prints one JSON object; a
column's value is the median over rounds of the runs' own medians. The issue's targets: JAX's
train step at most 1.5x PyTorch's channels-last time, folded inference at most 1.2x.

The JAX command is a template (`--jax-cmd`, with {python} {variant} {base} {size} {batch}
{infer_batch} {steps} {warmup} filled in; `--jax-arg` appends more), and the keys read
from its JSON are flags too. JAX's bench times its real train step, which augments the
batch on the device; the torch runs get `--augment` (the same augmentation, timed in
the step) unless `--no-torch-augment`.
Only the standard library is used here: any interpreter can run this script.
"""

import argparse
import json
import pathlib
import shlex
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository root

# --noloader: the data loader's rate needs the demo's phantom prepared; not compared here.
JAX_CMD = (
  '{python} -m ecam_jax.bench --config=configs/demo.py:variant={variant} '
  '--config.model.base_channels={base} --config.data.image_size={size} '
  '--config.train.batch_size={batch} --config.eval.batch_size={infer_batch} '
  '--steps={steps} --warmup={warmup} --noloader'
)
TORCH_CMD = (
  '{python} benchmarks/torch_parity/torch_bench.py --variant {variant} --base {base} '
  '--size {size} --batch {batch} --infer-batch {infer_batch} --steps {steps} --warmup {warmup} '
  '--infer-steps {steps} --infer-warmup {warmup} --memory-format {memory_format}'
)
TARGETS = {'train': 1.5, 'infer': 1.2}  # JAX / PyTorch channels_last, at most


def last_json(stdout: str) -> dict:
  """The last line of `stdout` that is a JSON object (runs may log before it)."""
  for line in reversed(stdout.strip().splitlines()):
    line = line.strip()
    if line.startswith('{'):
      try:
        return json.loads(line)
      except json.JSONDecodeError:
        continue
  return json.loads(stdout)


def run(name: str, cmd: list[str], timeout: float) -> dict:
  print(f'[{time.strftime("%H:%M:%S")}] {name}: {shlex.join(cmd)}', file=sys.stderr, flush=True)
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
  if proc.returncode:
    tail = '\n'.join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
    raise SystemExit(f'{name} failed (exit {proc.returncode}):\n{tail}')
  try:
    result = last_json(proc.stdout)
  except json.JSONDecodeError as e:
    raise SystemExit(f'{name} printed no JSON object:\n{proc.stdout[-2000:]}') from e
  result['_wall_s'] = time.perf_counter() - start
  return result


def median_of(results: list[dict], key: str):
  values = [r[key] for r in results if isinstance(r.get(key), int | float)]
  return statistics.median(values) if values else None


def peak_gflops(results: list[dict]):
  """Median matmul peak in GFLOP/s: torch_bench.py says GFLOP/s in 'peak_flops_unit';
  a result without a unit (ecam_jax.bench) gives FLOP/s."""
  values = [
    r['peak_flops'] * (1.0 if str(r.get('peak_flops_unit', '')).startswith('GFLOP') else 1e-9)
    for r in results
    if isinstance(r.get('peak_flops'), int | float)
  ]
  return statistics.median(values) if values else None


def fmt(value, digits: int = 2) -> str:
  return '-' if value is None else f'{value:.{digits}f}'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--variant', default='ec_cam_unet')
  parser.add_argument('--base', type=int, default=16)
  parser.add_argument('--size', type=int, default=128)
  parser.add_argument('--batch', type=int, default=4, help='train batch')
  parser.add_argument('--infer-batch', type=int, default=16, help='slices per inference call')
  parser.add_argument('--steps', type=int, default=20, help='timed steps (and inference calls)')
  parser.add_argument('--warmup', type=int, default=5, help='untimed steps first')
  parser.add_argument('--no-torch-augment', action='store_true', help='torch steps without it')
  parser.add_argument('--jax-python', default=str(ROOT / '.venv/bin/python'))
  parser.add_argument('--torch-python', default=str(ROOT / '.venv-torch/bin/python'))
  parser.add_argument('--jax-cmd', default=JAX_CMD, help='template of the JAX command')
  parser.add_argument('--jax-arg', action='append', default=[], help='extra JAX argument')
  parser.add_argument('--torch-arg', action='append', default=[], help='extra torch argument')
  parser.add_argument('--jax-train-key', default='train_step_ms')
  parser.add_argument('--jax-infer-key', default='infer_ms_per_slice')
  parser.add_argument('--jax-infer-unfolded-key', default='infer_ms_per_slice_unfolded')
  parser.add_argument('--formats', default='channels_last,contiguous', help='torch formats')
  parser.add_argument('--skip-jax', action='store_true', help='time the torch side only')
  parser.add_argument('--timeout', type=float, default=1800.0, help='seconds per run')
  parser.add_argument('--json-out', default='', help='also write the JSON summary here')
  args = parser.parse_args()

  fields = dict(
    variant=args.variant,
    base=args.base,
    size=args.size,
    batch=args.batch,
    infer_batch=args.infer_batch,
    steps=args.steps,
    warmup=args.warmup,
  )
  runners = {}  # name -> (command, key map: our name -> its JSON key)
  if not args.skip_jax:
    cmd = shlex.split(args.jax_cmd.format(python=args.jax_python, **fields)) + args.jax_arg
    keys = {
      'train': args.jax_train_key,
      'infer': args.jax_infer_key,
      'infer_unfolded': args.jax_infer_unfolded_key,
    }
    runners['jax'] = (cmd, keys)
  torch_keys = {
    'train': 'train_step_ms',
    'infer': 'infer_ms_per_slice',
    'infer_unfolded': 'infer_ms_per_slice_unfolded',
  }
  formats = [f for f in args.formats.split(',') if f]
  for memory_format in formats:
    cmd = TORCH_CMD.format(python=args.torch_python, memory_format=memory_format, **fields)
    augment = [] if args.no_torch_augment else ['--augment']
    runners[f'torch_{memory_format}'] = (shlex.split(cmd) + augment + args.torch_arg, torch_keys)

  names = list(runners)
  results = {name: [] for name in names}
  for r in range(args.rounds):
    order = names[r % len(names) :] + names[: r % len(names)]
    for name in order:
      results[name].append(
        run(f'round {r + 1}/{args.rounds} {name}', runners[name][0], args.timeout)
      )

  medians = {}
  for name in names:
    keys = runners[name][1]
    medians[name] = {ours: median_of(results[name], theirs) for ours, theirs in keys.items()}
    medians[name]['peak_gflops'] = peak_gflops(results[name])

  ratios = {}
  if 'jax' in medians:
    for memory_format in formats:
      ref = medians[f'torch_{memory_format}']
      for what in ('train', 'infer', 'infer_unfolded'):
        jax_value, torch_value = medians['jax'][what], ref[what]
        if jax_value is not None and torch_value:
          ratios[f'{what}_vs_{memory_format}'] = jax_value / torch_value
  verdict = {
    what: ratios[f'{what}_vs_channels_last'] <= limit
    for what, limit in TARGETS.items()
    if f'{what}_vs_channels_last' in ratios
  }

  title = f'{args.variant}, base {args.base}, {args.size}x{args.size}, train batch {args.batch}'
  print(f'\n### JAX vs PyTorch on CPU: {title}; medians over {args.rounds} rounds\n')
  print(
    '| run | train step (ms) | infer folded (ms/slice) | infer unfolded (ms/slice) | peak GFLOP/s |'
  )
  print('|---|---|---|---|---|')
  for name in names:
    m = medians[name]
    row = [fmt(m['train'], 1), fmt(m['infer']), fmt(m['infer_unfolded']), fmt(m['peak_gflops'], 1)]
    print(f'| {name} | ' + ' | '.join(row) + ' |')
  if ratios:
    print('\n| JAX / PyTorch | train step | infer folded | infer unfolded |')
    print('|---|---|---|---|')
    for memory_format in formats:
      cells = [ratios.get(f'{w}_vs_{memory_format}') for w in ('train', 'infer', 'infer_unfolded')]
      print(f'| vs {memory_format} | ' + ' | '.join(fmt(c) for c in cells) + ' |')
    for what, ok in verdict.items():
      limit = TARGETS[what]
      print(
        f'\n{what}: JAX / PyTorch channels_last = {ratios[f"{what}_vs_channels_last"]:.2f} '
        f'(target <= {limit}): {"met" if ok else "NOT met"}'
      )
  versions = {name: results[name][0].get('torch_version') for name in names}
  if 'jax' in runners:
    probe = [args.jax_python, '-c', 'import jax; print(jax.__version__)']
    versions['jax'] = subprocess.run(probe, capture_output=True, text=True).stdout.strip()
  summary = {
    'config': dict(fields, rounds=args.rounds),
    'medians': medians,
    'ratios': ratios,
    'targets': TARGETS,
    'met': verdict,
    'versions': versions,
    'commands': {name: shlex.join(runners[name][0]) for name in names},
    'runs': results,
  }
  line = json.dumps(summary)
  if args.json_out:
    pathlib.Path(args.json_out).write_text(line + '\n')
  print()
  print(line)


if __name__ == '__main__':
  main()
