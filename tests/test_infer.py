"""Inference on volumes with a briefly trained model: geometry kept through an oblique,
non-RAS affine; folded equals unfolded; flip TTA; eval summary; bad inputs."""

import json
import os
import pathlib
import subprocess
import sys

import chex
import jax
import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ecam_jax import infer
from ecam_jax.checkpoint import CheckpointError
from ecam_jax.configuration import load_config
from ecam_jax.data import volumes
from ecam_jax.data.errors import DataError
from ecam_jax.evaluate import ratios

ROOT = pathlib.Path(__file__).resolve().parents[1]


# The demo config, shrunk: a U-Net with EC convs (folding is exercised on trained weights;
# the full model's folding is tested in test_unet.py) and deep supervision, 64x64, base 8.
OVERRIDES = {
  'model.use_dws': True,
  'data.phantom_cases': 4,
  'data.phantom_size': 64,
  'data.image_size': 64,
  'data.split_sizes': (2, 1, 1),
  'data.prepare_workers': 1,
  'model.base_channels': 8,
  'train.batch_size': 8,
  'train.epochs': 10,
  'train.lr': 4e-3,
  'train.log_every_steps': 50,
}
VARIANT = 'unet_ec'


def _main(workdir, *flags):
  """python -m ecam_jax.main with the demo config and OVERRIDES (2 CPU devices), run from
  the workdir's parent with a relative --workdir, as the README's commands are."""
  command = [
    sys.executable,
    '-m',
    'ecam_jax.main',
    f'--config={ROOT}/configs/demo.py:variant={VARIANT}',
    f'--workdir={workdir.name}',
  ]
  command += [f'--config.{k}={v}'.replace(' ', '') for k, v in OVERRIDES.items()]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  return subprocess.run(
    command + list(flags), cwd=workdir.parent, env=env, capture_output=True, text=True
  )


def _config(workdir):
  config = load_config(ROOT / 'configs/demo.py', f'variant={VARIANT}')
  for key, value in OVERRIDES.items():
    section, name = key.split('.')
    config[section][name] = value
  config.data.root = str(workdir / 'phantom')
  return config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """The README's demo command, shrunk: phantom generated into the workdir, ~1 minute of
  training through main; then the same config for the Python API."""
  workdir = tmp_path_factory.mktemp('infer') / 'demo'
  run = _main(workdir)
  assert run.returncode == 0, run.stderr[-3000:]
  summary = json.loads((workdir / 'config.json').read_text())
  assert summary['data']['root'] == str(workdir / 'phantom')
  assert summary['model']['base_channels'] == 8
  records = [json.loads(x) for x in (workdir / 'metrics.jsonl').read_text().splitlines()]
  best = max(r['dsc'] for r in records if r['kind'] == 'val')
  assert best > 0.3, records[-1]
  return _config(workdir), workdir, workdir / 'phantom'


def _dice(a, b):
  tp, fp, fn = (a & b).sum(), (a & ~b).sum(), (~a & b).sum()
  return float(ratios(tp, fp, fn)['dsc'])


def _oblique(image: nib.Nifti1Image, degrees=12.0) -> tuple[np.ndarray, np.ndarray]:
  """The same anatomy stored another way: axes permuted and flipped (the file is then
  neither RAS nor LPS: A, I, L), and the whole grid tilted `degrees` off the axes."""
  data = np.asanyarray(image.dataobj)
  perm, flips = (1, 2, 0), (True, True, False)
  stored = np.transpose(data, perm)
  affine = image.affine.copy()
  affine[:3, :3] = affine[:3, :3][:, perm]
  for axis, flip in enumerate(flips):
    if flip:
      stored = np.flip(stored, axis)
      affine[:3, 3] += affine[:3, axis] * (stored.shape[axis] - 1)
      affine[:3, axis] *= -1
  tilt = np.eye(4)
  tilt[:3, :3] = Rotation.from_euler('xz', [degrees, degrees / 2], degrees=True).as_matrix()
  return np.ascontiguousarray(stored), tilt @ affine


def test_oblique_non_ras_volume_keeps_its_geometry_and_overlaps(trained, tmp_path):
  config, workdir, root = trained
  case = json.loads((workdir / 'splits.json').read_text())['test'][0]
  image = nib.load(root / 'imagesTr' / f'{case}.nii.gz')
  label = nib.load(root / 'labelsTr' / f'{case}.nii.gz')
  data, affine = _oblique(image)
  label_data, _ = _oblique(label)
  assert nib.aff2axcodes(affine) not in (('R', 'A', 'S'), ('L', 'P', 'S'))
  src = tmp_path / 'in' / 'oblique.nii.gz'
  src.parent.mkdir()
  nib.save(nib.Nifti1Image(data, affine), src)

  out = infer.predict_paths(config, workdir, str(src), str(tmp_path / 'out'), 'best')
  written = nib.load(out[0])
  source = nib.load(src)
  assert written.shape == source.shape and written.get_data_dtype() == np.uint8
  np.testing.assert_array_equal(written.affine, source.affine)
  np.testing.assert_array_equal(written.header.get_sform(), source.header.get_sform())
  mask = np.asanyarray(written.dataobj) > 0
  assert _dice(mask, np.isin(label_data, (1, 2))) > 0.3

  # The same from Python on the array: identical mask.
  predictor = infer.Predictor(config, workdir, 'best')
  np.testing.assert_array_equal(predictor.segment_array(data, affine), mask.astype(np.uint8))


def test_folded_equals_unfolded_on_trained_weights(trained):
  config, workdir, root = trained
  slices, _ = volumes.preprocess_image(next((root / 'imagesTr').iterdir()), config.data)
  folded = infer.Predictor(config, workdir, 'best', fold=True)
  unfolded = infer.Predictor(config, workdir, 'best', fold=False)
  assert folded.folded and not unfolded.folded
  n_folded = sum(x.size for x in jax.tree.leaves(folded.variables))
  n_unfolded = sum(x.size for x in jax.tree.leaves(unfolded.variables))
  assert n_folded < n_unfolded
  chex.assert_trees_all_close(
    folded.probabilities(slices), unfolded.probabilities(slices), atol=2e-4
  )


def test_flip_tta_is_the_mean_of_both_views(trained):
  config, workdir, root = trained
  slices, _ = volumes.preprocess_image(next((root / 'imagesTr').iterdir()), config.data)
  slices = slices[:8]
  plain = infer.Predictor(config, workdir, 'best')
  config.eval.tta_flip = True
  try:
    tta = infer.Predictor(config, workdir, 'best')
  finally:
    config.eval.tta_flip = False
  expected = 0.5 * (
    plain.probabilities(slices) + plain.probabilities(slices[:, :, ::-1])[:, :, ::-1]
  )
  chex.assert_trees_all_close(tta.probabilities(slices), expected, atol=1e-5)


def test_eval_through_main_scores_the_test_split(trained):
  config, workdir, _ = trained
  run = _main(workdir, '--mode=eval')
  assert run.returncode == 0, run.stderr[-3000:]
  saved = json.loads((workdir / 'eval' / 'summary.json').read_text())
  assert saved['count']['cases'] == 1
  (case,) = saved['cases'].values()
  for key in (
    'dsc',
    'sensitivity',
    'precision',
    'slice_dsc',
    'hd95_mm',
    'assd_mm',
    'empty_label_slices',
    'empty_prediction_slices',
  ):
    assert key in case
  assert case['dsc'] > 0.3
  assert (workdir / 'eval' / 'summary.md').read_text().count('|') > 10
  assert list((workdir / 'eval' / 'overlays').glob('*.png'))
  assert list((workdir / 'eval' / 'predictions').glob('*.nii.gz'))


def test_predict_through_main_with_relative_paths(trained, monkeypatch):
  config, workdir, root = trained
  run = _main(workdir, '--mode=predict')
  assert run.returncode != 0 and '--input' in run.stderr
  # The README's predict command: every path relative to where the user stands.
  image = sorted((root / 'imagesTr').iterdir())[0]
  relative_input = image.relative_to(workdir.parent)
  run = _main(workdir, '--mode=predict', f'--input={relative_input}', '--output=pred/mask.nii.gz')
  assert run.returncode == 0, run.stderr[-3000:]
  written, source = nib.load(workdir.parent / 'pred' / 'mask.nii.gz'), nib.load(image)
  assert written.shape == source.shape
  np.testing.assert_array_equal(written.affine, source.affine)
  # And from Python, with a relative workdir.
  monkeypatch.chdir(workdir.parent)
  assert infer.Predictor(config, workdir.name, 'best').meta['step'] > 0


def test_bad_inputs_are_clear_errors(trained, tmp_path):
  config, workdir, root = trained
  image = next((root / 'imagesTr').iterdir())
  with pytest.raises(DataError, match='refusing to overwrite'):
    infer.plan_outputs(str(image.parent), str(image.parent))
  with pytest.raises(DataError, match='does not exist'):
    infer.plan_outputs(str(tmp_path / 'missing.nii.gz'), str(tmp_path / 'o.nii.gz'))
  text = tmp_path / 'notes.nii.gz'
  text.write_text('not a nifti')
  with pytest.raises(DataError, match='notes.nii.gz'):
    infer.predict_paths(config, workdir, str(text), str(tmp_path / 'o.nii.gz'), 'best')
  four_d = tmp_path / 'four_d.nii.gz'
  nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.int16), np.eye(4)), four_d)
  with pytest.raises(DataError, match='four_d.nii.gz'):
    infer.predict_paths(config, workdir, str(four_d), str(tmp_path / 'o.nii.gz'), 'best')
  wrong = _config(workdir)
  wrong.model.base_channels = 16
  with pytest.raises(CheckpointError, match='shape'):
    infer.Predictor(wrong, workdir, 'best')
  with pytest.raises(CheckpointError, match='no latest'):
    infer.Predictor(config, tmp_path / 'empty', 'latest')


def test_largest_component_keeps_the_biggest_blob():
  mask = np.zeros((6, 10, 10), bool)
  mask[1:4, 1:4, 1:4] = True  # 27 voxels
  mask[5, 8, 8] = True
  mask[0:2, 7:9, 0:2] = True  # 8 voxels
  kept = infer.largest_component(mask)
  assert kept.sum() == 27 and kept[2, 2, 2] and not kept[5, 8, 8]
