"""Checks an export on a real volume: segments it through ONNX Runtime (model.onnx) and
through JAX (model.stablehlo), each from preprocessing.json alone, and reports the largest
logit difference and how far the two label maps agree.

  python -m ecam_jax.export_check --export=runs/demo/export --input=case.nii.gz

Exits 1 when the logits differ by more than the export's tolerance (preprocessing.json,
verification). Needs onnxruntime (pip install -e '.[export]'), not jax2onnx.
"""

import argparse
import json
import pathlib
import sys
from typing import Any

import numpy as np

from ecam_jax.data import case_files, volumes
from ecam_jax.errors import ConfigError, DataError
from ecam_jax.export import contract, folder, runtimes, segment


def check(export: str | pathlib.Path, source: str | pathlib.Path, batch: int = 8) -> dict[str, Any]:
  """The report the command prints (module docstring) for one volume, as a dict."""
  export = pathlib.Path(export)
  terms = contract.read(export)
  channels = len(contract.data_settings(terms).channels)
  (_, files), *more = case_files.cases_at(pathlib.Path(source), channels)
  if more:
    raise DataError(f'--input {source}: {len(more) + 1} cases; give one volume')
  image = volumes.load_channels(files, channels)
  onnx = segment.segment(terms, image, runtimes.onnx_runtime(export / folder.ONNX), batch)
  hlo = segment.segment(terms, image, runtimes.stablehlo_runtime(export / folder.STABLEHLO), batch)
  difference = max(float(np.abs(a - b).max()) for a, b in zip(onnx.views, hlo.views, strict=True))
  largest = max(float(np.abs(v).max()) for v in hlo.views)
  differing = int(np.count_nonzero(onnx.labels != hlo.labels))
  fg_onnx, fg_hlo = onnx.labels > 0, hlo.labels > 0
  both = int(np.count_nonzero(fg_onnx & fg_hlo))
  total = int(np.count_nonzero(fg_onnx)) + int(np.count_nonzero(fg_hlo))
  slices = int(onnx.views[0].shape[0]) * len(onnx.views)
  return {
    'export': str(export),
    'input': str(source),
    'slices': int(onnx.views[0].shape[0]),
    'max_abs_logit_difference': difference,
    'max_abs_logit': largest,
    'within_tolerance': difference <= folder.TOLERANCE * max(1.0, largest),
    'voxels': int(onnx.labels.size),
    'voxels_differing': differing,
    'label_agreement': 1.0 - differing / max(onnx.labels.size, 1),
    'foreground_dice': 2 * both / total if total else 1.0,
    'seconds_per_slice': {'onnxruntime': onnx.seconds / slices, 'jax': hlo.seconds / slices},
  }


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--export', required=True, help='the export folder (--mode=export)')
  parser.add_argument(
    '--input',
    required=True,
    help='a NIfTI volume (.nii or .nii.gz): one file, a 4-D file of the channels, or the '
    'CASE_0000 file of a case whose channels are files beside it',
  )
  parser.add_argument('--batch', type=int, default=8, help='slices per runtime call')
  args = parser.parse_args(argv)
  try:
    report = check(args.export, args.input, args.batch)
  except (ConfigError, DataError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(json.dumps(report, indent=1))
  return 0 if report['within_tolerance'] else 1


if __name__ == '__main__':
  sys.exit(main())
