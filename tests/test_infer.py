"""Inference on volumes with a briefly trained model: geometry kept through an oblique,
non-RAS affine; folded equals unfolded; flip TTA; eval summary; bad inputs. With an
untrained tiny model: any device count, the threshold, kept components, bad settings."""

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

from ecam_jax import infer, parallel, postprocess
from ecam_jax.configuration import load_config
from ecam_jax.data import volumes
from ecam_jax.errors import CheckpointError, ConfigError, DataError
from ecam_jax.models.build import build_model, init_variables
from ecam_jax.scoring import ratios

import tiny_runs

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
  tiny_runs.assert_binary_unchanged(workdir, 'demo_unet_ec')
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
  n_folded = sum(x.size for x in jax.tree.leaves(folded.members[0]))
  n_unfolded = sum(x.size for x in jax.tree.leaves(unfolded.members[0]))
  assert n_folded < n_unfolded
  chex.assert_trees_all_close(
    folded.probabilities(slices), unfolded.probabilities(slices), atol=2e-4
  )


def _sigmoid(x):
  return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def test_flip_tta_is_the_mean_of_both_views(trained):
  config, workdir, root = trained
  slices, _ = volumes.preprocess_image(next((root / 'imagesTr').iterdir()), config.data)
  images = slices[:8]
  plain = infer.Predictor(config, workdir, 'best', fold=False)
  config.eval.tta_flip = True
  try:
    tta = infer.Predictor(config, workdir, 'best', fold=False)
  finally:
    config.eval.tta_flip = False
  # Independently: the unfolded model on the image and on its mirror (the W axis), the
  # mirror's probabilities flipped back, averaged in NumPy.
  model = build_model(config.model)
  variables = jax.device_get(plain.members[0])
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False)['logits'][..., 0])
  straight = _sigmoid(logits(variables, images))
  mirrored = _sigmoid(logits(variables, np.ascontiguousarray(images[:, :, ::-1])))[:, :, ::-1]
  expected = (straight + mirrored) / 2
  np.testing.assert_allclose(tta.probabilities(slices[:8]), expected, atol=1e-5)
  assert np.abs(straight - expected).max() > 1e-3  # the views differ: TTA changes something


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


# An untrained tiny model: enough to compare device counts and to check post-processing.
def _tiny_config():
  config = load_config(ROOT / 'configs/demo.py', 'variant=unet')
  config.model.base_channels = 4
  config.data.image_size = 32
  config.eval.batch_size = 4
  return config


@pytest.fixture(scope='module')
def tiny():
  config = _tiny_config()
  variables = jax.device_get(init_variables(build_model(config.model), 0, 32))
  slices = np.random.default_rng(0).random((7, 32, 32), dtype=np.float32)
  one_device = parallel.data_mesh(jax.devices()[:1])
  reference = infer.Predictor(config, None, variables=variables, mesh=one_device)
  return config, variables, slices, reference.probabilities(slices)


def test_fit_batch_rounds_up_to_a_multiple_of_the_devices():
  for devices, requested, expected in [(1, 4, 4), (3, 4, 6), (5, 4, 5), (6, 4, 6), (8, 16, 16)]:
    mesh = parallel.data_mesh(jax.devices()[:devices])
    assert parallel.fit_batch(requested, mesh) == expected
  with pytest.raises(ConfigError, match='config.eval.batch_size=0'):
    parallel.fit_batch(0, parallel.data_mesh(jax.devices()[:3]))


@pytest.mark.parametrize('devices', [3, 5, 6])
def test_prediction_on_any_device_count_equals_one_device(tiny, devices):
  # 7 slices in batches of 4 rounded up to 6, 5, 6: neither the batch nor the slice count
  # divides, and the last batch is mostly padding that must not come back.
  config, variables, slices, one_device = tiny
  mesh = parallel.data_mesh(jax.devices()[:devices])
  predictor = infer.Predictor(config, None, variables=variables, mesh=mesh)
  prob = predictor.probabilities(slices)
  assert prob.shape == slices.shape
  np.testing.assert_allclose(prob, one_device, atol=1e-6)


def test_masks_are_thresholded_at_the_configured_probability(tiny):
  config, variables, _, _ = tiny
  volume = np.random.default_rng(1).uniform(-200, 300, (40, 36, 5)).astype(np.float32)
  affine = np.diag([0.8, 0.8, 2.5, 1.0])
  slices, record = volumes.preprocess_image(nib.Nifti1Image(volume, affine), config.data)
  predictor = infer.Predictor(config, None, variables=variables)
  restored = volumes.restore(predictor.probabilities(slices), record, order=1)
  config = config.copy_and_resolve_references()
  config.eval.threshold = float(np.quantile(restored, 0.7))  # 30% of voxels above it
  mask = infer.Predictor(config, None, variables=variables).segment_array(volume, affine)
  np.testing.assert_array_equal(mask, restored > config.eval.threshold)
  assert 0.25 < mask.mean() < 0.35


@pytest.mark.parametrize(
  ('key', 'value'),
  [
    ('threshold', 1.0),
    ('threshold', 0),
    ('keep_components', -1),
    ('keep_components', 1.5),
    ('keep_components', True),
    ('keep_components', '2'),
  ],
)
def test_bad_eval_settings_are_refused_before_any_checkpoint_is_read(tmp_path, key, value):
  config = _tiny_config()
  config.eval[key] = value
  with pytest.raises(ConfigError, match=f'config.eval.{key}='):
    infer.Predictor(config, tmp_path / 'no_run')


def _components() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """A mask with two equal 18-voxel blobs and a 1-voxel speck; the blobs alone, hand-built."""
  first, second, speck = (np.zeros((4, 12, 12), bool) for _ in range(3))
  first[0:2, 0:3, 0:3] = True
  second[2:4, 8:11, 8:11] = True
  speck[0, 10, 0] = True
  return first | second | speck, first, second, speck


@pytest.mark.parametrize(
  ('keep', 'parts'),
  [
    (0, 'first second speck'),
    (1, 'first'),  # of equal sizes, the first in scan order
    (2, 'first second'),
    (3, 'first second speck'),
    (0.5, 'first second'),
    (0.05, 'first second speck'),  # the speck is 1/18 of a blob
  ],
)
def test_keep_components(keep, parts):
  mask, first, second, speck = _components()
  named = {'first': first, 'second': second, 'speck': speck}
  expected = np.zeros_like(mask)
  for name in parts.split():
    expected |= named[name]
  np.testing.assert_array_equal(postprocess.keep_components(mask, keep), expected)


def test_keep_components_connects_through_corners_and_keeps_an_empty_mask():
  mask = np.zeros((3, 3, 3), bool)
  mask[0, 0, 0] = mask[1, 1, 1] = True  # touching at a corner only: one component
  np.testing.assert_array_equal(postprocess.keep_components(mask, 1), mask)
  empty = np.zeros((3, 3, 3), bool)
  np.testing.assert_array_equal(postprocess.keep_components(empty, 2), empty)


def test_a_folder_overlapped_equals_each_volume_alone(trained, tmp_path):
  """segment_files (the next case read and the previous mask written in threads while the
  model runs) writes exactly what segment_file writes case by case, and says where the
  time went."""
  config, workdir, root = trained
  cases = sorted(root.glob('imagesTr/*.nii.gz'))[:2]
  predictor = infer.Predictor(config, workdir, 'best')
  pairs = [(c, tmp_path / 'folder' / c.name) for c in cases]
  (tmp_path / 'folder').mkdir()
  predictor.segment_files(pairs)
  assert set(predictor.times.report()) >= {'read', 'preprocess', 'model', 'write', 'total'}
  for case, written in pairs:
    alone = predictor.segment_file(case, tmp_path / f'alone_{case.name}')
    np.testing.assert_array_equal(np.asanyarray(nib.load(written).dataobj), alone)
