"""The preprocessing cache: contents, reuse, rebuild on change, atomicity, bad inputs."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from ecam_jax.configuration import load_config
from ecam_jax.data import cache, layouts, source, splits, volumes
from ecam_jax.errors import ConfigError, DataError

import nifti_fixtures as fx


def _leftovers(path):
  return [p.name for p in path.rglob('*') if p.name.startswith(('.tmp-', '.old-'))]


@pytest.fixture
def dataset(tmp_path):
  return fx.write_msd(tmp_path / 'data', num_cases=3, shape=(24, 20, 6))


def _built(monkeypatch):
  """Records the case ids that prepare_cache builds (rather than reuses)."""
  built, build = [], cache._build_case
  monkeypatch.setattr(
    cache, '_build_case', lambda case, *a: (built.append(case.case_id), build(case, *a))
  )
  return built


def test_contents_match_preprocessing(dataset, tmp_path):
  config = fx.config(dataset)
  sc = cache.prepare_cache(config, tmp_path / 'work', progress=False)
  assert sc.path == tmp_path / 'work' / 'cache'
  assert sc.case_ids == ['case_000', 'case_001', 'case_002'] and sc.image_size == 32
  for k, case_id in enumerate(sc.case_ids):
    x, record = volumes.preprocess_image(dataset / 'imagesTr' / f'{case_id}.nii.gz', config.data)
    label = volumes.load_nifti(dataset / 'labelsTr' / f'{case_id}.nii.gz')
    y = volumes.preprocess_label(label, config.data)
    assert isinstance(sc.image(case_id), np.memmap) and sc.image(case_id).dtype == np.float32
    np.testing.assert_array_equal(sc.image(case_id), x)
    np.testing.assert_array_equal(sc.label(case_id), y)
    assert sc.label(case_id).dtype == np.uint8 and set(np.unique(y)) <= {0, 1}
    assert sc.record(case_id) == record
    rows = sc.slices_of([case_id])
    np.testing.assert_array_equal(sc.index.case[rows], k)
    np.testing.assert_array_equal(sc.index.z[rows], np.arange(6))
    np.testing.assert_array_equal(sc.index.foreground[rows], y.any(axis=(1, 2)))
  both = sc.slices_of(['case_002', 'case_000'])
  np.testing.assert_array_equal(sc.index.case[both], [2] * 6 + [0] * 6)
  with pytest.raises(DataError, match="case 'nope' is not in the cache"):
    sc.slices_of(['nope'])


def test_reuse_and_rebuild_what_changed(dataset, tmp_path, monkeypatch):
  config = fx.config(dataset)
  built = _built(monkeypatch)
  cache.prepare_cache(config, tmp_path, progress=False)
  assert built == ['case_000', 'case_001', 'case_002']
  built.clear()
  cache.prepare_cache(config, tmp_path, progress=False)
  assert built == []  # unchanged: reused as it is
  image = dataset / 'imagesTr' / 'case_001.nii.gz'
  os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
  cache.prepare_cache(config, tmp_path, progress=False)
  assert built == ['case_001']  # a changed file: only its case
  built.clear()
  config.data.hu_window = (-200.0, 300.0)
  sc = cache.prepare_cache(config, tmp_path, progress=False)
  assert built == ['case_000', 'case_001', 'case_002']  # a changed setting: all
  x, _ = volumes.preprocess_image(image, config.data)
  np.testing.assert_array_equal(sc.image('case_001'), x)


def test_removed_case_leaves_the_cache(dataset, tmp_path):
  config = fx.config(dataset)
  cache.prepare_cache(config, tmp_path, progress=False)
  meta = json.loads((dataset / 'dataset.json').read_text())
  meta['training'] = meta['training'][1:]  # drops case_002 (listed in reverse)
  (dataset / 'dataset.json').write_text(json.dumps(meta))
  sc = cache.prepare_cache(config, tmp_path, progress=False)
  assert sc.case_ids == ['case_000', 'case_001'] and len(sc.index.case) == 12
  assert not (tmp_path / 'cache' / 'cases' / 'case_002').exists()


def test_failure_mid_prepare_leaves_no_complete_cache(dataset, tmp_path, monkeypatch):
  config = fx.config(dataset)
  save = np.save

  def failing_save(path, array):
    if 'case_001' in str(path) and path.name == 'label.npy':
      raise OSError('disk full')  # mid-write of the second case
    save(path, array)

  monkeypatch.setattr(np, 'save', failing_save)
  with pytest.raises(OSError, match='disk full'):
    cache.prepare_cache(config, tmp_path, progress=False)
  path = tmp_path / 'cache'
  assert not (path / 'manifest.json').exists() and _leftovers(path) == []
  assert sorted(p.name for p in (path / 'cases').iterdir()) == ['case_000']
  with pytest.raises(DataError, match='not a complete cache'):
    cache.SliceCache(path)
  monkeypatch.setattr(np, 'save', save)
  (path / 'cases' / '.tmp-case_002-1234').mkdir()  # what a killed process leaves
  built = _built(monkeypatch)
  sc = cache.prepare_cache(config, tmp_path, progress=False)
  assert built == ['case_001', 'case_002'] and _leftovers(path) == []
  assert len(sc.index.case) == 18


def test_parallel_prepare_matches_inline(dataset, tmp_path):
  inline = cache.prepare_cache(fx.config(dataset), tmp_path / 'a', progress=False)
  config = fx.config(dataset, prepare_workers=2, cache_dir=str(tmp_path / 'b'))
  parallel = cache.prepare_cache(config, tmp_path / 'unused', progress=True)
  assert parallel.path == tmp_path / 'b'
  for case_id in inline.case_ids:
    np.testing.assert_array_equal(parallel.image(case_id), inline.image(case_id))
    np.testing.assert_array_equal(parallel.label(case_id), inline.label(case_id))
  for a, b in zip(inline.index, parallel.index, strict=True):
    np.testing.assert_array_equal(a, b)


def test_error_in_a_worker_process_names_the_file(dataset, tmp_path):
  path, message = _truncate(dataset)
  with pytest.raises(DataError, match=rf'{path}.*{message}'):
    cache.prepare_cache(fx.config(dataset, prepare_workers=2), tmp_path, progress=False)
  assert not (tmp_path / 'cache' / 'manifest.json').exists() and _leftovers(tmp_path) == []


def _truncate(dataset):
  path = dataset / 'imagesTr' / 'case_001.nii.gz'
  path.write_bytes(path.read_bytes()[:400])
  return path, 'corrupt or truncated'


def _label_value(dataset):
  path = dataset / 'labelsTr' / 'case_002.nii.gz'
  label = np.asanyarray(nib.load(path).dataobj).copy()
  label[0, 0, 0] = 5
  fx.write_nifti(path, label)
  return path, r'label values \[5\] are not declared'


def _nan(dataset):
  path = dataset / 'imagesTr' / 'case_000.nii.gz'
  image = fx.volume(0, (24, 20, 6))[0].astype(np.float32)
  image[3, 3, 3] = np.nan
  fx.write_nifti(path, image)
  return path, 'NaN'


def _shape(dataset):
  path = dataset / 'labelsTr' / 'case_001.nii.gz'
  fx.write_nifti(path, np.zeros((24, 20, 7), np.uint8))
  return path, 'shape .* differs from its image'


def _affine(dataset):
  path = dataset / 'labelsTr' / 'case_001.nii.gz'
  fx.write_nifti(path, fx.volume(1, (24, 20, 6))[1], fx.RAS)
  return path, 'affine differs'


def _missing(dataset):
  path = dataset / 'imagesTr' / 'case_002.nii.gz'
  path.unlink()
  return path, r'listed in .*dataset\.json'


@pytest.mark.parametrize('damage', [_truncate, _label_value, _nan, _shape, _affine, _missing])
def test_bad_input_fails_before_a_complete_cache(dataset, tmp_path, damage):
  path, message = damage(dataset)
  with pytest.raises(DataError, match=rf'{path}.*{message}'):
    cache.prepare_cache(fx.config(dataset), tmp_path, progress=False)
  assert not (tmp_path / 'cache' / 'manifest.json').exists()
  assert _leftovers(tmp_path) == []


def test_header_errors_stop_before_anything_is_written(dataset, tmp_path):
  _shape(dataset)
  with pytest.raises(DataError):
    cache.prepare_cache(fx.config(dataset), tmp_path, progress=False)
  assert not (tmp_path / 'cache').exists()


def test_foreground_label_must_be_declared(dataset, tmp_path):
  with pytest.raises(ConfigError, match=r'config.data.foreground_labels has \[3\]'):
    cache.prepare_cache(fx.config(dataset, foreground_labels=(1, 3)), tmp_path, progress=False)


def _write_mr_task(root, num_cases=3, shape=(16, 16, 6)):
  """A binary MR task in MSD layout: dataset.json says MRI and labels {0, 1}, nothing more."""
  ids = [f'la_{i:03d}' for i in range(num_cases)]
  for i, case_id in enumerate(ids):
    image, label = fx.volume(i, shape)
    fx.write_nifti(root / 'imagesTr' / f'{case_id}.nii.gz', image.astype(np.float32) * 3.0)
    fx.write_nifti(root / 'labelsTr' / f'{case_id}.nii.gz', (label > 0).astype(np.uint8))
  meta = {
    'modality': {'0': 'MRI'},
    'labels': {'0': 'background', '1': 'left atrium'},
    'training': [
      {'image': f'./imagesTr/{c}.nii.gz', 'label': f'./labelsTr/{c}.nii.gz'} for c in ids
    ],
  }
  (root / 'dataset.json').write_text(json.dumps(meta))
  return ids


def test_msd_mr_task_caches_with_default_py_and_no_data_settings(tmp_path):
  """Issue 11 item 10: configs/default.py with only data.root set reads modality and labels
  from dataset.json, once, before the cache; the cache and the recorded config hold them."""
  ids = _write_mr_task(tmp_path / 'heart')
  config = load_config(fx.CONFIG)
  config.data.root = str(tmp_path / 'heart')
  cases = source.resolve_data(config, tmp_path / 'work')
  assert [c.case_id for c in cases] == ids
  assert (config.data.modality, config.data.label_values, config.data.foreground_labels) == (
    'MR',
    (0, 1),
    (1,),
  )
  recorded = json.loads(config.to_json_best_effort())['data']  # what config.json gets
  assert (recorded['modality'], recorded['label_values'], recorded['foreground_labels']) == (
    'MR',
    [0, 1],
    [1],
  )
  splits.check(ids, config.data, tmp_path / 'work')
  sc = cache.prepare_cache(config, tmp_path / 'work', progress=False)
  settings = json.loads((sc.path / 'manifest.json').read_text())['settings']
  assert settings['channels'] == ['MRI'] and settings['foreground_labels'] == [1]
  assert 'mr_percentiles' in settings and 'hu_window' not in settings
  image = np.asarray(sc.image(ids[0]))
  assert image.shape == (6, 512, 512, 1)
  # z-scored (CT would lie in [0, 1]); resizing smooths, so the std is only near 1
  assert abs(float(image.mean())) < 0.1 and image.min() < -0.5 and 0.5 < image.std() < 1.1
  label = volumes.load_nifti(tmp_path / 'heart' / 'labelsTr' / f'{ids[0]}.nii.gz')
  expected = volumes.to_canonical(np.asarray(label.dataobj), label.affine)[0]
  np.testing.assert_array_equal(np.asarray(sc.label(ids[0]))[:, ::32, ::32], expected)


def test_foreground_cases_are_those_with_a_foreground_slice(dataset, tmp_path):
  empty = np.zeros((24, 20, 6), np.uint8)
  fx.write_nifti(dataset / 'labelsTr' / 'case_001.nii.gz', empty)
  sc = cache.prepare_cache(fx.config(dataset), tmp_path / 'work', progress=False)
  assert sc.foreground_cases() == {'case_000', 'case_002'}


def test_an_nnunet_dataset_and_the_same_data_in_msd_4d_layout_give_the_same_cache(tmp_path):
  """Two channels (T2, ADC: each z-scored on its own), as nnU-Net v2 channel files and as
  MSD v1 4-D files: the same arrays, records and slice index."""
  nnunet = fx.config(fx.write_nnunet(tmp_path / 'v2'), layout='nnunet')
  msd = fx.config(fx.write_msd_4d(tmp_path / 'v1'), layout='msd')
  caches = []
  for config, work in ((nnunet, 'a'), (msd, 'b')):
    layouts.resolve_settings(config.data)
    caches.append(cache.prepare_cache(config, tmp_path / work, progress=False))
  a, b = caches
  assert a.case_ids == b.case_ids and a.channels == b.channels == 2
  for case_id in a.case_ids:
    assert a.image(case_id).shape == (8, 32, 32, 2)
    np.testing.assert_array_equal(a.image(case_id), b.image(case_id))
    np.testing.assert_array_equal(a.label(case_id), b.label(case_id))
    assert a.record(case_id) == b.record(case_id)
    for c in range(2):  # each channel z-scored on its own (before the resize)
      assert abs(float(np.mean(a.image(case_id)[..., c]))) < 0.2
  np.testing.assert_array_equal(a.index.foreground, b.index.foreground)


def test_channel_files_of_one_case_on_another_grid_or_a_4d_file_of_other_channels(tmp_path):
  root = fx.write_nnunet(tmp_path / 'v2')
  config = fx.config(root, layout='nnunet')
  layouts.resolve_settings(config.data)
  second = root / 'imagesTr' / 'case_001_0001.nii.gz'
  fx.write_nifti(second, np.zeros((24, 24, 7), np.int16))
  with pytest.raises(
    DataError,
    match=r'case_001_0001\.nii\.gz: shape \(24, 24, 7\) differs from channel 0 .*case_001_0000',
  ):
    cache.prepare_cache(config, tmp_path / 'a', progress=False)
  fx.write_nifti(second, np.zeros((24, 24, 8), np.int16), fx.RAS)
  with pytest.raises(DataError, match=r'case_001_0001\.nii\.gz: affine differs from channel 0'):
    cache.prepare_cache(config, tmp_path / 'a', progress=False)
  root = fx.write_msd_4d(tmp_path / 'v1', channels=('T2', 'ADC', 'DWI'))
  meta = json.loads((root / 'dataset.json').read_text())
  meta['modality'] = {'0': 'T2', '1': 'ADC'}
  (root / 'dataset.json').write_text(json.dumps(meta))
  config = fx.config(root)
  layouts.resolve_settings(config.data)
  with pytest.raises(
    DataError,
    match=r'case_000\.nii\.gz: array shape \(24, 24, 8, 3\); expected a 4-D volume of 2 channels',
  ):
    cache.prepare_cache(config, tmp_path / 'b', progress=False)


def test_nnunets_ct_normalization_uses_the_foreground_statistics_of_every_case(tmp_path):
  """ct_normalization='nnunet': (p0.5, p99.5, mean, std) of the labelled voxels of every
  case (NumPy here, every voxel: the cases hold fewer than the 10,000 sampled), kept in
  config.data.ct_statistics and the cache's settings; the cached slices use them."""
  root = fx.write_msd(tmp_path / 'data', num_cases=3, shape=(24, 20, 6))
  config = fx.config(root, ct_normalization='nnunet')
  layouts.resolve_settings(config.data)
  sc = cache.prepare_cache(config, tmp_path / 'work', progress=False)
  voxels = []
  for i in range(3):
    image = nib.load(root / 'imagesTr' / f'case_{i:03d}.nii.gz').get_fdata()
    label = nib.load(root / 'labelsTr' / f'case_{i:03d}.nii.gz').get_fdata()
    voxels.append(image[label > 0])
  voxels = np.concatenate(voxels)
  lo, hi = np.percentile(voxels, (0.5, 99.5))
  ((got_lo, got_hi, mean, std),) = config.data.ct_statistics
  np.testing.assert_allclose(
    [got_lo, got_hi, mean, std], [lo, hi, voxels.mean(), voxels.std()], rtol=1e-9
  )
  settings = json.loads((sc.path / 'manifest.json').read_text())['settings']
  assert settings['ct_statistics'] == [[got_lo, got_hi, mean, std]] and 'hu_window' not in settings
  x, _ = volumes.preprocess_image(root / 'imagesTr' / 'case_000.nii.gz', config.data)
  np.testing.assert_array_equal(sc.image('case_000'), x)
  # clipped to [p0.5, p99.5], then z-scored (the linear resize stays in that range)
  assert (lo - mean) / std - 1e-5 <= x.min() < 0 < x.max() <= (hi - mean) / std + 1e-5


_HOLD = (
  'import fcntl, sys, time\n'
  'f = open(sys.argv[1], "a+")\n'
  'fcntl.flock(f, fcntl.LOCK_EX)\n'
  'f.write(\'{"host": "elsewhere", "pid": 7}\'); f.flush()\n'
  'print("held", flush=True)\n'
  'sys.stdin.read()\n'  # until the test closes stdin
)


def test_runners_sharing_a_cache_folder_take_turns(dataset, tmp_path, monkeypatch):
  """While another process holds the cache folder's lock (one fold's runner building the
  cache), prepare_cache says whom it waits for and waits; then it builds the cache."""
  import subprocess
  import sys
  import threading

  config = fx.config(dataset)
  path = cache.cache_path(config.data, tmp_path / 'work')
  path.parent.mkdir(parents=True)
  other = subprocess.Popen(
    [sys.executable, '-c', _HOLD, str(path.parent / f'.cache{cache.PREPARE_LOCK}')],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  said, lines, done = threading.Event(), [], []
  monkeypatch.setattr(
    cache, 'print', lambda line, **_: (lines.append(line), said.set()), raising=False
  )
  try:
    assert other.stdout.readline().strip() == 'held'
    worker = threading.Thread(
      target=lambda: done.append(cache.prepare_cache(config, tmp_path / 'work'))
    )
    worker.start()
    assert said.wait(timeout=120)  # it reported the holder, and waits
    assert lines == [f'waiting for elsewhere pid 7, which prepares {path}']
    assert not done and not (path / 'manifest.json').exists()
  finally:
    other.stdin.close()  # the holder ends, and its lock with it
    other.wait(timeout=60)
  worker.join(timeout=300)
  assert done and done[0].case_ids == ['case_000', 'case_001', 'case_002']
