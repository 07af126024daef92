"""--mode=export: a trained model's export folder, written whole or not at all.

The folder (default WORKDIR/export) is built under a temporary name and renamed into
place (atomic.atomic_path), replacing an earlier export only once the new one is complete
and verified: before the rename, each artifact is read back from its file and run on
random slices, and its logits must equal the JAX model's within TOLERANCE (float32 ones;
the float16 variant's difference is recorded, not bounded).
"""

import json
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from ecam_jax import configuration
from ecam_jax.atomic import atomic_path, write_bytes_atomic, write_json_atomic
from ecam_jax.data import source as data_source
from ecam_jax.errors import ConfigError, ExportMismatch
from ecam_jax.export import contract, network, onnx_model, runtimes, stablehlo

ONNX, ONNX_FLOAT16, STABLEHLO = 'model.onnx', 'model.float16.onnx', 'model.stablehlo'
# |artifact - JAX| <= TOLERANCE * max(1, max |JAX logit|) on the verification slices; the
# differences measured are about 1e-6 of that scale (docs/export.md).
TOLERANCE = 1e-4
VERIFY_SLICES, VERIFY_SEED = 2, 0


def _artifacts(net: network.Network, folded_convs: int, float16: bool) -> dict[str, Any]:
  s, c, k, b = net.image_size, net.in_channels, net.num_classes, onnx_model.BATCH

  def tensor(name: str, shape: list) -> dict[str, Any]:
    return {'name': name, 'shape': shape, 'dtype': 'float32'}

  onnx_entry = {
    'layout': 'NCHW',
    'input': tensor(onnx_model.INPUT, [b, c, s, s]),
    'output': tensor(onnx_model.OUTPUT, [b, k, s, s]),
    'opset': onnx_model.OPSET,
    'batchnorm_folded_into_convs': folded_convs,
    'float16_variant': ONNX_FLOAT16 if float16 else None,
  }
  hlo_entry = {
    'layout': 'NHWC',
    'input': tensor('images', [stablehlo.BATCH, s, s, c]),
    'output': tensor('logits', [stablehlo.BATCH, s, s, k]),
    'platforms': list(stablehlo.PLATFORMS),
    'load': "jax.export.deserialize(bytearray(open(path, 'rb').read())).call(images)",
  }
  return {ONNX: onnx_entry, STABLEHLO: hlo_entry}


def verify(net: network.Network, folder: pathlib.Path, float16: bool) -> dict[str, Any]:
  """Runs the written artifacts on random slices against the JAX model (module docstring)."""
  rng = np.random.default_rng(VERIFY_SEED)
  shape = (VERIFY_SLICES, net.image_size, net.image_size, net.in_channels)
  images = rng.uniform(size=shape).astype(np.float32)
  expected = np.asarray(jax.jit(net.logits)(images))
  scale = max(1.0, float(np.abs(expected).max()))
  runs = {
    ONNX: runtimes.onnx_runtime(folder / ONNX),
    STABLEHLO: runtimes.stablehlo_runtime(folder / STABLEHLO),
  }
  if float16:
    runs[ONNX_FLOAT16] = runtimes.onnx_runtime(folder / ONNX_FLOAT16)
  differences = {name: float(np.abs(run(images) - expected).max()) for name, run in runs.items()}
  for name in (ONNX, STABLEHLO):
    if not differences[name] <= TOLERANCE * scale:
      raise ExportMismatch(
        f'{folder / name}: its logits differ from the JAX model by up to {differences[name]:.3g}, '
        f'more than {TOLERANCE} x {scale:.3g}; the export is not written'
      )
  return {
    'inputs': f'{VERIFY_SLICES} slices uniform in [0, 1), numpy default_rng({VERIFY_SEED})',
    'max_abs_logit': float(np.abs(expected).max()),
    'max_abs_difference': differences,
    'tolerance': f'{TOLERANCE} x max(1, max_abs_logit), float32 artifacts',
  }


def _trained_fold(workdir: pathlib.Path) -> str:
  """The run's config.data.fold as its config.json records it ('' when not a fold)."""
  try:
    fold = json.loads((workdir / 'config.json').read_text())['data'].get('fold', '')
  except (OSError, ValueError, KeyError, TypeError):
    return ''
  return fold if isinstance(fold, str) else ''


def export(
  config: ml_collections.ConfigDict,
  workdir: str | pathlib.Path,
  which: str = 'best',
  output: str | pathlib.Path | None = None,
  *,
  float16: bool = False,
) -> pathlib.Path:
  """Writes the export folder of checkpoint `which` of the run in `workdir`; returns it.
  The run of one fold of a cross-validation exports that fold, and its contract says so."""
  if jax.process_count() > 1:
    raise ConfigError('--mode=export runs in one process; start it without a cluster')
  for name in ('jax2onnx', 'onnx', 'onnxruntime'):  # before any slow step
    onnx_model.require(name)
  workdir = pathlib.Path(workdir)
  data_source.resolve_settings(config, workdir)  # e.g. the modality, from config.json
  configuration.check(config)
  target = pathlib.Path(output).expanduser() if output else workdir / 'export'
  net, meta = network.restore(config, str(workdir), which)
  model, folded_convs = onnx_model.optimize(
    onnx_model.convert(net, config.model.variant or config.model.name)
  )
  with atomic_path(target, directory=True) as tmp:
    write_bytes_atomic(tmp / ONNX, model.SerializeToString())
    if float16:
      write_bytes_atomic(tmp / ONNX_FLOAT16, onnx_model.float16(model).SerializeToString())
    write_bytes_atomic(tmp / STABLEHLO, stablehlo.serialize(net))
    provenance = {
      'workdir': str(workdir.absolute()),
      'checkpoint': {'which': which, **{k: v for k, v in meta.items() if k != 'config'}},
      'network': {
        'name': config.model.name,
        'variant': config.model.variant,
        'ec_folded': net.ec_folded,
        'side_heads': 'left out: they feed training losses only, never the logits',
      },
    }
    fold = _trained_fold(workdir)
    if fold not in ('', 'all'):
      provenance['fold'] = {
        'value': fold,
        'note': "one fold of a cross-validation, not the folds' ensemble (--folds)",
      }
    write_json_atomic(
      tmp / contract.FILE,
      contract.build(
        config, _artifacts(net, folded_convs, float16), verify(net, tmp, float16), provenance
      ),
    )
  return target
