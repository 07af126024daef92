"""The synthetic phantom: MSD layout, HU and geometry, a small target, atomic writing, CLI,
and a threshold that cannot find the target (so the task is not trivial)."""

import json

import nibabel as nib
import numpy as np
import pytest

from ecam_jax.data import cache, layouts, phantom, volumes
from ecam_jax.errors import DataError

import nifti_fixtures as fx


@pytest.fixture(scope='module')
def generated(tmp_path_factory):
  out = tmp_path_factory.mktemp('phantom') / 'ph'
  return out, phantom.generate(out, 3, seed=7, size=64)


def _canonical(path):
  img = nib.load(path)
  return volumes.to_canonical(np.asanyarray(img.dataobj), img.affine)


def test_msd_layout_and_files(generated):
  out, images = generated
  meta = json.loads((out / 'dataset.json').read_text())
  assert meta['modality'] == {'0': 'CT'} and meta['numTraining'] == 3 and meta['test'] == []
  assert meta['labels'] == {'0': 'background', '1': 'target', '2': 'lesion'}
  assert meta['training'][0] == {
    'image': './imagesTr/phantom_000.nii.gz',
    'label': './labelsTr/phantom_000.nii.gz',
  }
  cases = layouts.discover_cases(fx.config(out).data)
  assert [c.image for c in cases] == images
  for case in cases:
    image, label = nib.load(case.image), nib.load(case.label)
    assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(image.affine, label.affine)
    assert image.shape[:2] == (64, 64) and 32 <= image.shape[2] <= 64
    zooms = image.header.get_zooms()
    assert 300 / 64 <= zooms[0] <= 380 / 64 and 2.5 <= zooms[2] <= 5
    assert set(np.unique(np.asanyarray(label.dataobj))) <= {0, 1, 2}
  orientations = {nib.aff2axcodes(nib.load(p).affine) for p in images}
  assert orientations == {('L', 'P', 'S'), ('R', 'A', 'S')}


def test_anatomy_is_where_the_canonical_view_puts_it(generated):
  _, images = generated
  for path in images:  # LPS and RAS files alike
    hu, record = _canonical(path)  # [Z, H, W]: rows anterior -> posterior, columns right -> left
    label, _ = _canonical(str(path).replace('imagesTr', 'labelsTr'))
    bone_rows = np.nonzero(hu > 400)[1]
    assert bone_rows.mean() > 0.6 * hu.shape[1]  # the spine is posterior
    top = hu[-1]  # the most superior slice holds the liver, on the patient's right (image left)
    left, right = top[:, : hu.shape[2] // 3], top[:, -hu.shape[2] // 3 :]
    assert ((left > 40) & (left < 90)).mean() > ((right > 40) & (right < 90)).mean()
    rows, cols = np.nonzero(label.any(axis=0))
    assert rows.mean() < bone_rows.mean()  # the target lies anterior to the spine


def test_target_is_small_thin_and_in_about_half_the_slices(generated):
  _, images = generated
  for path in images:
    hu, _ = _canonical(path)
    label, _ = _canonical(str(path).replace('imagesTr', 'labelsTr'))
    with_target = label.any(axis=(1, 2))
    assert 0.3 < with_target.mean() < 0.7
    assert (label > 0).mean(axis=(1, 2)).max() < 0.05  # a few percent of a slice or less
    target = np.median(hu[label == 1])
    assert abs(target - (phantom.BED_HU + 45)) < 15  # contrast over its soft-tissue bed


def test_a_threshold_cannot_segment_the_target(generated):
  """The best HU band, chosen knowing the labels, reaches a DSC far below a U-Net's 0.8."""
  _, images = generated
  volumes_ = [
    (_canonical(p)[0], _canonical(str(p).replace('imagesTr', 'labelsTr'))[0] > 0) for p in images
  ]
  best = 0.0
  for lo in range(40, 120, 5):
    for hi in range(lo + 10, 160, 10):
      dsc = [
        2 * ((x >= lo) & (x < hi) & y).sum() / (((x >= lo) & (x < hi)).sum() + y.sum())
        for x, y in volumes_
      ]
      best = max(best, float(np.mean(dsc)))
  assert best < 0.6


def test_reuse_same_arguments_refuse_others(generated):
  out, images = generated
  assert phantom.generate(out, 3, seed=7, size=64) == images
  with pytest.raises(DataError, match='is not a phantom generated with'):
    phantom.generate(out, 3, seed=8, size=64)


def test_a_failed_generation_leaves_nothing(tmp_path, monkeypatch):
  save = phantom._save
  calls = []

  def failing(*args):
    calls.append(1)
    if len(calls) == 3:
      raise OSError('disk full')
    save(*args)

  monkeypatch.setattr(phantom, '_save', failing)
  with pytest.raises(OSError, match='disk full'):
    phantom.generate(tmp_path / 'ph', 2, seed=0, size=32)
  assert list(tmp_path.iterdir()) == []


def test_cli_writes_a_dataset_the_cache_accepts(tmp_path, capsys):
  phantom.main(['--out', str(tmp_path / 'ph'), '--cases', '2', '--seed', '1', '--size', '32'])
  assert '2 cases' in capsys.readouterr().out
  sc = cache.prepare_cache(fx.config(tmp_path / 'ph'), tmp_path / 'work', progress=False)
  assert sc.case_ids == ['phantom_000', 'phantom_001'] and sc.index.foreground.any()


def test_lesion_knobs_grow_and_darken_the_lesion_only(tmp_path):
  """lesion_scale and lesion_drop_hu change the lesion; at their defaults phantom.json does
  not name them (folders generated before they existed are reused)."""
  default = phantom.generate(tmp_path / 'a', 1, seed=3, size=64, lesion_prob=1.0)
  big = phantom.generate(
    tmp_path / 'b', 1, seed=3, size=64, lesion_prob=1.0, lesion_scale=2.0, lesion_drop_hu=80.0
  )
  assert 'lesion_scale' not in json.loads((tmp_path / 'a' / 'phantom.json').read_text())
  assert json.loads((tmp_path / 'b' / 'phantom.json').read_text())['lesion_scale'] == 2.0
  labels = [
    np.asanyarray(nib.load(p.parents[1] / 'labelsTr' / p.name).dataobj)
    for p in (default[0], big[0])
  ]
  images = [np.asanyarray(nib.load(p).dataobj).astype(float) for p in (default[0], big[0])]
  assert 0 < (labels[0] == 2).sum() < (labels[1] == 2).sum()
  np.testing.assert_array_equal(labels[0] > 0, labels[1] > 0)  # the target is the same
  drop = [np.median(x[y == 1]) - np.median(x[y == 2]) for x, y in zip(images, labels, strict=True)]
  assert drop[1] > drop[0] + 20
