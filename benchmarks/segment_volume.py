"""Seconds to segment one NIfTI volume end to end, EC folded and unfolded, and where they
go.

  .venv/bin/python benchmarks/segment_volume.py [--size 512 --slices 100 --base 64]
      [--image_size 256] [--ec folded,unfolded]

The volume is a phantom case (python -m ecam_jax.data.phantom) resampled along z to
--slices slices of --size x --size. The model (configs/msd.py's preprocessing, the
--variant at --base channels, at --image_size, by default --size) has freshly
initialized weights: the time does not depend on them. Timed: Predictor.segment_file,
i.e. loading the .nii.gz, orienting it, every batch of eval.batch_size slices
normalized, resized, through the model, resized back and decided on the device, the
largest connected component and writing the mask; the first call compiles and is
reported apart (bench_report.volume). Prints one JSON object per EC mode, with the
seconds of each host stage (Predictor.times) and of each device step alone
(Predictor.device_seconds).
"""

import argparse
import json
import pathlib

import jax

from ecam_jax.bench_report import volume
from ecam_jax.configuration import load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', type=int, default=512)
  parser.add_argument('--slices', type=int, default=100)
  parser.add_argument('--image_size', type=int, default=None, help="the model's (default: --size)")
  parser.add_argument('--base', type=int, default=64)
  parser.add_argument('--variant', default='ec_cam_unet')
  parser.add_argument('--batch', type=int, default=8, help='slices per model call')
  parser.add_argument(
    '--ec', default='folded,unfolded', help='EC folded, unfolded or both (comma-separated)'
  )
  args = parser.parse_args()

  config = load_config(ROOT / 'configs/msd.py', f'variant={args.variant}')
  config.model.base_channels = args.base
  config.eval.batch_size = args.batch
  devices = f'{jax.local_device_count()} x {jax.local_devices()[0].device_kind}'
  for mode in args.ec.split(','):
    out = volume(config, args.size, args.slices, args.image_size, fold=mode == 'folded')
    print(json.dumps({'devices': devices, **out}), flush=True)


if __name__ == '__main__':
  main()
