"""Seconds to segment one NIfTI volume end to end, EC folded and unfolded.

  .venv/bin/python benchmarks/segment_volume.py [--size 512 --slices 100 --base 64]

The volume is a phantom case (python -m ecam_jax.data.phantom) resampled along z to
--slices slices of --size x --size. The model (configs/msd.py's preprocessing, the
--variant at --base channels) has freshly initialized weights: the time does not depend
on them. Timed: Predictor.segment_file, i.e. loading the .nii.gz, preprocessing, every
slice through the model in batches of eval.batch_size, undoing the preprocessing, the
largest connected component and writing the mask; the first call of each model compiles
and is reported apart. Prints one JSON object, with the seconds of each stage (read,
preprocess, model, restore, decide, components, write: Predictor.times).
"""

import argparse
import json
import pathlib
import tempfile
import time

import jax
import numpy as np

from ecam_jax.configuration import load_config
from ecam_jax.data import phantom
from ecam_jax.infer import Predictor
from ecam_jax.models.build import build_model, init_variables

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', type=int, default=512)
  parser.add_argument('--slices', type=int, default=100)
  parser.add_argument('--base', type=int, default=64)
  parser.add_argument('--variant', default='ec_cam_unet')
  parser.add_argument('--batch', type=int, default=8, help='slices per model call')
  parser.add_argument(
    '--ec', default='folded,unfolded', help='EC folded, unfolded or both (comma-separated)'
  )
  args = parser.parse_args()

  config = load_config(ROOT / 'configs/msd.py', f'variant={args.variant}')
  config.model.base_channels = args.base
  config.data.image_size = args.size
  config.eval.batch_size = args.batch
  variables = jax.jit(lambda: init_variables(build_model(config.model), 0, args.size))()
  out = {
    'volume': f'{args.size}x{args.size}x{args.slices}',
    'variant': args.variant,
    'base_channels': args.base,
    'devices': f'{jax.local_device_count()} x {jax.local_devices()[0].device_kind}',
  }
  with tempfile.TemporaryDirectory() as tmp:
    source = phantom.volume_file(tmp, args.size, args.slices)
    for fold in (mode == 'folded' for mode in args.ec.split(',')):
      name = 'folded' if fold else 'unfolded'
      predictor = Predictor(config, tmp, fold=fold, variables=variables)
      start = time.perf_counter()
      predictor.probabilities(np.zeros((args.batch, args.size, args.size), np.float32))
      out[f'compile_s_{name}'] = time.perf_counter() - start
      predictor.times.reset()
      start = time.perf_counter()
      predictor.segment_file(source, pathlib.Path(tmp) / f'mask_{name}.nii.gz')
      out[f'seconds_{name}'] = time.perf_counter() - start
      out[f'stages_{name}'] = predictor.times.report()
      print(json.dumps(out), flush=True)


if __name__ == '__main__':
  main()
