"""Several input channels end to end, on a small nnU-Net v2 raw dataset written here (in an
MSD-style folder, as nnU-Net's converters write it) whose target is visible in the second
channel only: it trains on a fold of an nnU-Net splits_final.json, is evaluated and
predicts from channel files and from a 4-D file in channel 0's geometry; with the second
channel zeroed it finds nothing, so that channel reaches the network. Regions an nnU-Net
dataset.json declares become the run's classes and regions."""

import json
import pathlib

import nibabel as nib
import numpy as np
import pytest

from ecam_jax import evaluate, infer, train
from ecam_jax.configuration import load_config
from ecam_jax.data import source

import nifti_fixtures as fx

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHAPE = (32, 32, 12)
CASES = [f'case_{i:03d}' for i in range(6)]


def _case(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(T2, ADC, label): a blob that only ADC shows; T2 is noise with a bright ring elsewhere
  that has nothing to do with the label."""
  rng = np.random.default_rng(i)
  x, y, z = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing='ij')
  cx, cy = rng.integers(9, 23, 2)
  radius = rng.uniform(4, 7)
  label = (((x - cx) ** 2 + (y - cy) ** 2 < radius**2) & (z >= 2) & (z < 10)).astype(np.uint8)
  t2 = rng.normal(100, 30, SHAPE) + 200 * (np.abs(np.hypot(x - 16, y - 16) - 12) < 1.5)
  adc = rng.normal(100, 30, SHAPE) + 250 * label
  return t2.astype(np.float32), adc.astype(np.float32), label


@pytest.fixture(scope='module')
def dataset(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp('nnunet') / 'Dataset001_Toy'
  for i, case in enumerate(CASES):
    t2, adc, label = _case(i)
    fx.write_nifti(root / 'imagesTr' / f'{case}_0000.nii.gz', t2)
    fx.write_nifti(root / 'imagesTr' / f'{case}_0001.nii.gz', adc)
    fx.write_nifti(root / 'labelsTr' / f'{case}.nii.gz', label)
  meta = {
    'channel_names': {'0': 'T2', '1': 'ADC'},
    'labels': {'background': 0, 'lesion': 1},
    'numTraining': len(CASES),
    'file_ending': '.nii.gz',
  }
  (root / 'dataset.json').write_text(json.dumps(meta))
  folds = [{'train': CASES[2:], 'val': CASES[:2]}, {'train': CASES[:4], 'val': CASES[4:]}]
  (root / 'splits_final.json').write_text(json.dumps(folds))
  return root


def _config(root: pathlib.Path):
  config = load_config(ROOT / 'configs/demo.py', 'variant=unet')
  config.data.update(
    root=str(root),
    phantom_cases=0,
    layout='msd',  # recognised as nnU-Net's from its dataset.json
    modality='',
    foreground_labels=None,
    hu_window=(-160.0, 240.0),
    image_size=32,
    splits_file=str(root / 'splits_final.json'),
    fold='1',
    prepare_workers=1,
  )
  config.model.base_channels = 8
  config.train.update(batch_size=8, epochs=25, lr=4e-3, warmup_steps=0, eval_every_epochs=25)
  config.train.log_every_steps = 50
  config.eval.batch_size = 12
  return config


@pytest.fixture(scope='module')
def trained(dataset, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run')
  config = _config(dataset)
  train.train_and_evaluate(config, str(workdir))
  return config, workdir


def _dice(a, b) -> float:
  return 2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def test_the_run_reads_the_channels_and_the_fold(trained):
  config, workdir = trained
  recorded = json.loads((workdir / 'config.json').read_text())
  assert recorded['data']['layout'] == 'nnunet' and recorded['data']['channels'] == ['T2', 'ADC']
  assert recorded['model']['in_channels'] == 2
  assert json.loads((workdir / 'splits.json').read_text()) == {
    'train': CASES[:4],
    'val': CASES[4:],
    'test': [],
  }


def test_it_learns_what_only_the_second_channel_shows(trained, dataset):
  """Scored by --mode=eval on the fold's validation cases; then the same cases with ADC
  zeroed: the lesion is not found."""
  config, workdir = trained
  summary = evaluate.evaluate_split(config, workdir, 'best', split='val')
  dsc = summary['mean']['dsc']
  print(f'two-channel lesion, validation DSC per volume: {dsc:.3f}')
  assert dsc > 0.7, summary['mean']
  predictor = infer.Predictor(config, workdir, 'best')
  for case in CASES[4:]:
    t2 = nib.load(dataset / 'imagesTr' / f'{case}_0000.nii.gz')
    adc = nib.load(dataset / 'imagesTr' / f'{case}_0001.nii.gz')
    label = np.asanyarray(nib.load(dataset / 'labelsTr' / f'{case}.nii.gz').dataobj) > 0
    both = predictor.segment_image([t2, adc]) > 0
    blind = predictor.segment_image([t2, nib.Nifti1Image(np.zeros(SHAPE, np.float32), adc.affine)])
    assert _dice(both, label) > 0.6 and _dice(blind > 0, label) < 0.1


def test_predict_takes_channel_files_or_a_4d_file(trained, dataset, tmp_path):
  """A folder of CASE_XXXX files gives CASE.nii.gz per case; one CASE_0000 file finds its
  sibling; a 4-D file gives the same mask; all with channel 0's shape and affine."""
  config, workdir = trained
  images = dataset / 'imagesTr'
  written = infer.predict_paths(config, workdir, str(images), str(tmp_path / 'out'), 'best')
  assert [p.name for p in written] == [f'{c}.nii.gz' for c in CASES]
  mask = nib.load(tmp_path / 'out' / 'case_005.nii.gz')
  channel0 = nib.load(images / 'case_005_0000.nii.gz')
  assert mask.shape == channel0.shape and mask.get_data_dtype() == np.uint8
  np.testing.assert_array_equal(mask.affine, channel0.affine)
  one = infer.predict_paths(
    config, workdir, str(images / 'case_005_0000.nii.gz'), str(tmp_path / 'one.nii.gz'), 'best'
  )
  np.testing.assert_array_equal(nib.load(one[0]).dataobj, mask.dataobj)
  stacked = np.stack(
    [np.asanyarray(nib.load(images / f'case_005_000{c}.nii.gz').dataobj) for c in (0, 1)], -1
  )
  four_d = fx.write_nifti(tmp_path / 'in' / 'four_d.nii.gz', stacked, channel0.affine)
  out = infer.predict_paths(config, workdir, str(four_d), str(tmp_path / 'four_d'), 'best')
  np.testing.assert_array_equal(nib.load(out[0]).dataobj, mask.dataobj)
  assert out[0].name == 'four_d.nii.gz'


def test_regions_of_an_nnunet_dataset_json_are_the_runs_classes_and_regions(tmp_path):
  """BraTS-style labels (two regions, one class, regions_class_order): with several classes,
  each label value is a class (named where dataset.json names it) and each list a region."""
  root = fx.write_nnunet(tmp_path / 'brats', labels={'background': 0, 'whole': [1, 2], 'core': 2})
  meta = json.loads((root / 'dataset.json').read_text())
  meta['regions_class_order'] = [1, 2]
  (root / 'dataset.json').write_text(json.dumps(meta))
  config = fx.config(root, layout='nnunet', merge_foreground=False)
  source.resolve_data(config, tmp_path / 'work')
  data = config.data
  assert (data.classes, data.regions) == ('label1:1,core:2', 'whole:1+2')
  assert config.model.num_classes == 3 and config.model.in_channels == 2


def test_the_export_takes_both_channels_and_export_check_reads_channel_files(trained, dataset):
  """preprocessing.json lists each channel and its normalization; model.onnx takes
  [batch, 2, S, S]; export_check segments a case from its channel files through ONNX
  Runtime and JAX alike."""
  pytest.importorskip('jax2onnx')
  pytest.importorskip('onnxruntime')
  from ecam_jax import export_check
  from ecam_jax.export import contract, folder

  config, workdir = trained
  out = folder.export(config, workdir, 'best', None)
  terms = contract.read(out)
  assert [(c['name'], c['normalization']) for c in terms['input']['channels']] == [
    ('T2', 'zscore'),
    ('ADC', 'zscore'),
  ]
  assert terms['artifacts']['model.onnx']['input']['shape'] == ['batch', 2, 32, 32]
  report = export_check.check(out, dataset / 'imagesTr' / 'case_004_0000.nii.gz')
  assert report['within_tolerance'] and report['foreground_dice'] > 0.99


def test_the_prostate_config_reads_msds_4d_files_as_two_channels_and_two_classes(tmp_path):
  """configs/prostate.py on an MSD Task05-shaped folder (T2 + ADC in one 4-D file per case)."""
  from ecam_jax.data import prepare

  root = fx.write_msd_4d(tmp_path / 'Task05_Prostate', num_cases=4)
  config = load_config(ROOT / 'configs/prostate.py')
  config.data.update(root=str(root), image_size=32, split_ratios=(0.5, 0.25, 0.25))
  config.data.prepare_workers = 1
  cache, splits = prepare.prepare_data(config, prepare.prepare_workdir(tmp_path / 'work'))
  assert config.data.channels == ('T2', 'ADC') and config.model.in_channels == 2
  assert config.model.num_classes == 3 and config.data.regions == 'whole_prostate:1+2'
  assert cache.channels == 2 and cache.image('case_000').shape == (8, 32, 32, 2)
  assert sum(len(v) for v in splits.values()) == 4
